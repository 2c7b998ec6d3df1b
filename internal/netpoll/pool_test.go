package netpoll

import "testing"

// TestPoolNeverDelaysAJobBehindABlockedOne: a job that blocks does not
// hold up the next, and workers are reused.
func TestPoolNeverDelaysAJobBehindABlockedOne(t *testing.T) {
	release := make(chan struct{})
	done := make(chan int, 10)
	p := NewPool(func(i int) {
		if i == 0 {
			<-release
		}
		done <- i
	})
	p.Dispatch(0) // blocks
	for i := 1; i <= 5; i++ {
		p.Dispatch(i)
		if got := <-done; got != i {
			t.Fatalf("job %d ran as %d", i, got)
		}
	}
	if n := p.Workers(); n > 2 {
		t.Fatalf("%d workers for one blocked job and jobs one at a time: not reused", n)
	}
	close(release)
	if got := <-done; got != 0 {
		t.Fatalf("the blocked job: %d", got)
	}
}
