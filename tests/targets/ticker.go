// Go runtime target (Debian's golang-go): GOMAXPROCS=2 threads of the Go scheduler, a
// time.Ticker every 20 ms, a producer and a consumer goroutine on a channel (the consumer
// checks that every number comes once and in order), and goroutines burning CPU. Prints
// "ready", then answers each line on stdin with
//   "progress TICKS INORDER" : the ticks seen in the next 500 ms and whether every number
//                              since the start came once and in order (and some did meanwhile).
package main

import (
	"bufio"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

func main() {
	var ticks, got int64
	inorder := int32(1)
	ch := make(chan int64, 4)
	go func() {
		for i := int64(1); ; i++ {
			ch <- i
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		var last int64
		for v := range ch {
			if v != last+1 {
				atomic.StoreInt32(&inorder, 0)
			}
			last = v
			atomic.StoreInt64(&got, v)
		}
	}()
	for k := 0; k < 3; k++ {
		go func(k int) {
			x := uint64(k)
			for {
				x = x*6364136223846793005 + 1442695040888963407
				if x == 0 {
					fmt.Println("never")
				}
			}
		}(k)
	}
	t := time.NewTicker(20 * time.Millisecond)
	go func() {
		for range t.C {
			atomic.AddInt64(&ticks, 1)
		}
	}()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		t0, g0 := atomic.LoadInt64(&ticks), atomic.LoadInt64(&got)
		time.Sleep(500 * time.Millisecond)
		t1, g1 := atomic.LoadInt64(&ticks), atomic.LoadInt64(&got)
		fmt.Println("progress", t1-t0, atomic.LoadInt32(&inorder) == 1 && g1 > g0)
	}
}
