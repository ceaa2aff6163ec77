//go:build !go1.21

package machnet

import "context"

// afterCancel runs f when ctx is cancelled (a watcher goroutine: context.AfterFunc needs
// Go 1.21).
func afterCancel(ctx context.Context, f func()) (stop func() bool) {
	quit := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			f()
		case <-quit:
		}
	}()
	return func() bool { close(quit); return true }
}
