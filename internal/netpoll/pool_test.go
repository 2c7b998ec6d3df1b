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
	const jobs = 50
	for i := 1; i <= jobs; i++ {
		p.Dispatch(i)
		if got := <-done; got != i {
			t.Fatalf("job %d ran as %d", i, got)
		}
	}
	// One worker is blocked and one runs the others in turn; a job can be
	// dispatched just before the worker that ran the previous one is back
	// waiting for the next (then it gets a new one), so allow a few.
	if n := p.Workers(); n > 5 {
		t.Fatalf("%d workers for one blocked job and %d jobs one at a time: not reused", n, jobs)
	}
	close(release)
	if got := <-done; got != 0 {
		t.Fatalf("the blocked job: %d", got)
	}
}

// TestPoolOfKeepsItsWorkers: a pool of at most max reusable workers runs
// max jobs at once on reusable workers; the next ones are one-off.
func TestPoolOfKeepsItsWorkers(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 10)
	p := NewPoolOf(3, func(int) { started <- struct{}{}; <-release })
	for i := range 5 {
		p.Dispatch(i)
	}
	for range 5 {
		<-started
	}
	if n := p.Workers(); n != 3 {
		t.Fatalf("%d reusable workers with 5 jobs running; want the pool's 3", n)
	}
	close(release)
}
