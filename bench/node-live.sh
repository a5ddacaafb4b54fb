#!/bin/bash
# A Node.js process (a 2-million-object array updated every 10 ms; 7 threads) moved live
# between two network namespaces and back, 3 times each way, keyed; prints migrate -v's
# frozen time and last-image bytes for each move, and the process's own sum after each
# (intact: it grows by 1000 per turn of its loop). usage: bench/node-live.sh [CRS_BINARY]
set -euo pipefail
cd "$(dirname "$0")"
CRS=$(realpath "${1:-../target/x86_64-unknown-linux-gnu/release/crs}")
. ./lib.sh
two_nodes 81 node
cat > $work/app.js <<'JS'
const a = []; for (let i = 0; i < 2000000; i++) a.push({v: i});
let n = 0;
setInterval(() => { for (let k = 0; k < 1000; k++) { a[(n * 1000 + k) % a.length].v++; } n++; }, 10);
process.on('SIGUSR1', () => { let s = 0; for (const o of a) s += o.v; console.log('sum ' + s + ' n ' + n); });
console.log('ready ' + process.pid);
JS
(bare ip netns exec $A setsid node $work/app.js) </dev/null >$work/log 2>&1 &
until grep -q ready $work/log; do sleep 0.1; done
pid=$(awk '/ready/ {print $2}' $work/log); sleep 2
for i in 1 2 3; do
  out=$(ip netns exec $A $CRS migrate -v --key $work/key --live $pid 10.81.0.2 2>&1)
  echo "$out" | grep -E "frozen" | head -2
  new=$(echo "$out" | awk '/runs there/ {print $NF}')
  kill -USR1 $new; sleep 0.5; tail -1 $work/log
  # move back: restartd on A
  ip netns exec "$A" "$CRS" restartd -b 10.81.0.1 -p 1023 --key "$work/key" --allow-root 2>"$work/ra.log" & disown
  until grep -q listening "$work/ra.log"; do sleep 0.01; done
  out=$(ip netns exec $B $CRS migrate -v --key $work/key --live $new 10.81.0.1 2>&1)
  echo "$out" | grep -E "frozen" | head -2
  pid=$(echo "$out" | awk '/runs there/ {print $NF}')
  pkill -f "restartd -b 10.81.0.1" || true; sleep 0.2
done
kill -9 $pid
