// Java target (Debian's OpenJDK): the JVM's own threads (G1's, the JIT compilers, the
// reference handler...), a ScheduledExecutor ticking every 20 ms, a producer and a consumer
// thread on a BlockingQueue (the consumer checks that every number comes once and in order),
// threads burning CPU, and a map churned so that the collector keeps working. Prints
// "ready", then answers each line on stdin with
//   "progress TICKS INORDER" : the ticks seen in the next 500 ms and whether every number
//                              since the start came once and in order (and some did meanwhile).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.HashMap;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

public class Ticker {
    public static void main(String[] args) throws Exception {
        AtomicLong ticks = new AtomicLong(), got = new AtomicLong();
        AtomicBoolean inorder = new AtomicBoolean(true);
        BlockingQueue<Long> q = new ArrayBlockingQueue<>(4);
        daemon(() -> {
            for (long i = 1; ; i++) {
                q.put(i);
                Thread.sleep(1);
            }
        });
        daemon(() -> {
            long last = 0;
            while (true) {
                long v = q.take();
                if (v != last + 1) inorder.set(false);
                last = v;
                got.set(v);
            }
        });
        for (int k = 0; k < 2; k++) {
            final long seed = k;
            daemon(() -> {
                long x = seed;
                HashMap<Long, long[]> m = new HashMap<>();
                for (long n = 0; ; n++) {
                    x = x * 6364136223846793005L + 1442695040888963407L;
                    if (n % 64 == 0) m.put(x & 0xffff, new long[32]);
                    if (x == 0) System.out.println("never " + m.size());
                }
            });
        }
        ScheduledExecutorService t = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread th = new Thread(r);
            th.setDaemon(true);
            return th;
        });
        // (With a fixed delay: a fixed rate would catch up on the ticks a freeze held back.)
        t.scheduleWithFixedDelay(ticks::incrementAndGet, 20, 20, TimeUnit.MILLISECONDS);
        System.out.println("ready");
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        while (in.readLine() != null) {
            long t0 = ticks.get(), g0 = got.get();
            Thread.sleep(500);
            long t1 = ticks.get(), g1 = got.get();
            System.out.println("progress " + (t1 - t0) + " " + (inorder.get() && g1 > g0));
        }
    }

    interface Body { void run() throws Exception; }

    static void daemon(Body b) {
        Thread th = new Thread(() -> {
            try { b.run(); } catch (Exception e) { System.out.println("failed " + e); }
        });
        th.setDaemon(true);
        th.start();
    }
}
