package machnet

import (
	"sync"
	"time"
)

// deadline is one direction's deadline of a Conn: wait() is closed once it has passed. Setting
// it again re-arms it (as net.Pipe's deadlines do): a zero time means none.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	passed chan struct{} // closed when the deadline passed
	// onPass runs (without mu) each time the deadline passes, e.g. to wake a blocked Send.
	onPass func()
}

func newDeadline(onPass func()) *deadline {
	return &deadline{passed: make(chan struct{}), onPass: onPass}
}

// set arms the deadline at t (zero: none). A time in the past takes effect at once.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.passed // the timer ran: wait for its close before replacing the channel
	}
	d.timer = nil
	closed := isClosed(d.passed)
	if t.IsZero() {
		if closed {
			d.passed = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.passed = make(chan struct{})
		}
		passed := d.passed
		d.timer = time.AfterFunc(dur, func() {
			close(passed)
			if d.onPass != nil {
				d.onPass()
			}
		})
		return
	}
	if !closed {
		close(d.passed)
		if d.onPass != nil {
			go d.onPass()
		}
	}
}

// wait returns a channel closed once the deadline has passed.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.passed
}

// hasPassed tells whether the deadline has passed.
func (d *deadline) hasPassed() bool { return isClosed(d.wait()) }

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
