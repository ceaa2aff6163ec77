//go:build go1.21

package machnet

import "context"

// afterCancel runs f when ctx is cancelled, without a goroutine until then.
func afterCancel(ctx context.Context, f func()) (stop func() bool) {
	return context.AfterFunc(ctx, f)
}
