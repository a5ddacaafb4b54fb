const fs = require('fs');
const out = fs.openSync(process.argv[2], 'w');
const a = []; for (let i = 0; i < 2000000; i++) a.push({v: i});
let n = 0, last = process.hrtime.bigint();
setInterval(() => { for (let k = 0; k < 1000; k++) { a[(n * 1000 + k) % a.length].v++; } n++;
  const now = process.hrtime.bigint(); const gap = Number(now - last) / 1e6; last = now;
  fs.writeSync(out, `tick ${n} gap_ms ${gap.toFixed(0)}\n`); }, 10);
