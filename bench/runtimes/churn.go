package main

import (
	"fmt"
	"os"
	"sync"
	"time"
)

type node struct {
	next *node
	v    [16]int64
}

func main() {
	f, _ := os.Create(os.Args[1])
	var mu sync.Mutex
	counts := make([]int64, 4)
	for g := 0; g < 4; g++ {
		go func(g int) {
			var head *node
			for i := 0; ; i++ {
				n := &node{next: head}
				n.v[0] = int64(i)
				head = n
				if i%5000 == 0 {
					head = nil // garbage for the GC
				}
				if i%1000 == 0 {
					mu.Lock()
					counts[g]++
					mu.Unlock()
					time.Sleep(time.Millisecond)
				}
			}
		}(g)
	}
	big := make([]int64, 32<<20) // 256 MiB
	t := time.NewTicker(20 * time.Millisecond)
	n := 0
	last := time.Now()
	for range t.C {
		for k := 0; k < 100000; k++ {
			big[(n*100000+k)%len(big)]++
		}
		n++
		now := time.Now()
		gap := now.Sub(last)
		last = now
		mu.Lock()
		fmt.Fprintf(f, "tick %d gap_ms %d counts %v\n", n, gap.Milliseconds(), counts)
		mu.Unlock()
	}
}
