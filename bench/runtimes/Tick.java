import java.util.*;
import java.io.*;
public class Tick {
  public static void main(String[] a) throws Exception {
    PrintWriter out = new PrintWriter(new FileWriter(a[0]), true);
    Map<Integer, long[]> m = new HashMap<>();
    long n = 0, sum = 0; long last = System.nanoTime();
    Thread t = new Thread(() -> { long k = 0; while (true) { k++; if (k % 10000000 == 0) { synchronized (Tick.class) {} } } });
    t.setDaemon(true); t.start();
    while (true) {
      for (int i = 0; i < 1000; i++) { long[] v = new long[64]; v[0] = n + i; m.put((int)((n * 1000 + i) % 200000), v); sum += v[0]; }
      n++;
      Thread.sleep(10);
      long now = System.nanoTime();
      out.println("tick " + n + " gap_ms " + (now - last) / 1000000 + " sum " + sum + " size " + m.size());
      last = now;
    }
  }
}
