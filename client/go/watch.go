package tokenvend

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenvend/tokenvend/client/go/tokenvendpb"
)

// Backoff between two WatchToken attempts: doubled per failure, with jitter, and back to
// the start once a token arrives.
const (
	watchBackoffStart = 100 * time.Millisecond
	watchBackoffMax   = 30 * time.Second
)

// watch is one profile's WatchToken loop.
type watch struct {
	// first closes when the first attempt has an outcome: a token (firstErr nil) or an
	// error.
	first    chan struct{}
	once     sync.Once
	firstErr error
}

func (w *watch) settle(err error) {
	w.once.Do(func() {
		w.firstErr = err
		close(w.first)
	})
}

// Watch keeps the local copy of profile's token current through tokenvend's WatchToken
// stream, so that [Client.GetToken] answers from it without waiting: tokenvend sends each
// replacement as it makes it, well before the copy reaches its refresh margin. When the
// stream breaks (tokenvend restarting, a network fault) Watch reconnects with backoff
// (100 ms doubling to 30 s, with jitter); meanwhile GetToken works as without a watch,
// serving the copy while it is valid.
//
// Watch returns once the first attempt has an outcome: nil when the first token is in the
// local copy, or that attempt's error (an [*Error]). After a [Retryable] error the watch
// goes on trying in the background; after another (an unknown profile) it stops. The
// wait is bounded by ctx and, when ctx has no deadline, by the fetch timeout (10 s); the
// watch itself runs until ctx is cancelled or the Client is closed. Watching a profile
// already watched only waits for that watch's first outcome.
func (c *Client) Watch(ctx context.Context, profile string) error {
	c.mu.Lock()
	w := c.watches[profile]
	if w == nil {
		w = &watch{first: make(chan struct{})}
		c.watches[profile] = w
		wctx, cancel := context.WithCancel(ctx)
		stopOnClose := context.AfterFunc(c.life, cancel)
		go func() {
			defer cancel()
			defer stopOnClose()
			c.runWatch(wctx, profile, w)
			c.mu.Lock()
			if c.watches[profile] == w {
				delete(c.watches, profile)
			}
			c.mu.Unlock()
		}()
	}
	c.mu.Unlock()

	wait, cancel := c.rpcContext(ctx)
	defer cancel()
	select {
	case <-w.first:
		return w.firstErr
	case <-wait.Done():
		return newError("Watch", profile, wait.Err())
	case <-ctx.Done():
		return newError("Watch", profile, ctx.Err())
	}
}

func (c *Client) runWatch(ctx context.Context, profile string, w *watch) {
	backoff := watchBackoffStart
	for {
		err := c.watchOnce(ctx, profile, w, func() { backoff = watchBackoffStart })
		if ctx.Err() != nil {
			w.settle(newError("Watch", profile, ctx.Err()))
			return
		}
		if errors.Is(err, io.EOF) {
			// tokenvend ended the stream: it is shutting down, or the profile's
			// configuration changed. Either way, watch again.
			err = status.Error(codes.Unavailable, "tokenvend ended the watch")
		}
		werr := newError("Watch", profile, err)
		w.settle(werr)
		if !werr.Retryable() {
			return
		}
		// Full jitter over the upper half, so that clients cut off together do not
		// come back together.
		sleep := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, watchBackoffMax)
		select {
		case <-time.After(sleep):
		case <-ctx.Done():
			w.settle(newError("Watch", profile, ctx.Err()))
			return
		}
	}
}

// watchOnce runs one WatchToken stream until it fails, storing every token it brings.
func (c *Client) watchOnce(ctx context.Context, profile string, w *watch, got func()) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.WatchToken(sctx, &tokenvendpb.WatchTokenRequest{Profile: profile}, c.callOpts...)
	if err != nil {
		return err
	}
	for {
		pb, err := stream.Recv()
		if err != nil {
			return err
		}
		if pb.GetAccessToken() == "" {
			continue
		}
		c.watched(profile, fromProto(pb))
		got()
		w.settle(nil)
	}
}

// watched makes a token from the stream the local copy: the stream sends tokenvend's
// current token, which replaces the local one whatever their expiries.
func (c *Client) watched(profile string, t *Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keep(c.entry(profile), t, c.now())
}
