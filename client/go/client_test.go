package tokenvend_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

// newClient returns a client of the test server and a counter of its GetToken RPCs.
func newClient(t *testing.T, opts ...tokenvend.Option) (*tokenvend.Client, *atomic.Int64) {
	t.Helper()
	var rpcs atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoke grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		if strings.HasSuffix(method, "/GetToken") {
			rpcs.Add(1)
		}
		return invoke(ctx, method, req, reply, cc, callOpts...)
	}
	opts = append(opts, tokenvend.WithDialOptions(grpc.WithUnaryInterceptor(count)))
	c, err := tokenvend.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, &rpcs
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

var jwtShape = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

func TestGetTokenDemo(t *testing.T) {
	c, _ := newClient(t)
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if !jwtShape.MatchString(tok.AccessToken) {
		t.Errorf("access token does not look like a JWT (%d chars)", len(tok.AccessToken))
	}
	if tok.TokenType != "Bearer" {
		t.Errorf("TokenType = %q, want Bearer", tok.TokenType)
	}
	// The server may hand out a token it fetched for an earlier test, so allow some age.
	if ttl := time.Until(tok.ExpiresAt); ttl < 200*time.Second || ttl > 301*time.Second {
		t.Errorf("token expires in %v, want about 300s", ttl)
	}
	if got, want := tok.Headers["authorization"], "Bearer "+tok.AccessToken; got != want {
		t.Errorf(`Headers["authorization"] is not "Bearer " + AccessToken`)
	}
	if tok.Profile != "demo" {
		t.Errorf("Profile = %q, want demo", tok.Profile)
	}
}

func TestGetTokenServedFromLocalCache(t *testing.T) {
	c, rpcs := newClient(t)
	first, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	second, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if n := rpcs.Load(); n != 1 {
		t.Errorf("%d GetToken RPCs for two calls, want 1", n)
	}
	if second.AccessToken != first.AccessToken {
		t.Error("the second call returned a different token")
	}
	if d := time.Since(start); d > 10*time.Millisecond {
		t.Errorf("cached call took %v", d)
	}
	// Each caller gets its own copy, so one caller cannot change another's headers.
	second.Headers["authorization"] = "changed"
	third, _ := c.GetToken(ctx(t), "demo")
	if third.Headers["authorization"] == "changed" {
		t.Error("a caller's change leaked into the cache")
	}
}

func TestGetTokenConcurrentCallersShareOneRPC(t *testing.T) {
	c, rpcs := newClient(t)
	var wg sync.WaitGroup
	tokens := make([]string, 50)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := c.GetToken(ctx(t), "demo")
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = tok.AccessToken
		}()
	}
	wg.Wait()
	if n := rpcs.Load(); n != 1 {
		t.Errorf("%d GetToken RPCs for 50 concurrent callers, want 1", n)
	}
	for _, tok := range tokens[1:] {
		if tok != tokens[0] {
			t.Fatal("concurrent callers got different tokens")
		}
	}
}

func TestRefreshMarginAndMinTTL(t *testing.T) {
	// A margin longer than the token's life means the local copy is never good enough.
	c, rpcs := newClient(t, tokenvend.WithRefreshMargin(time.Hour))
	for range 2 {
		if _, err := c.GetToken(ctx(t), "demo"); err != nil {
			t.Fatal(err)
		}
	}
	if n := rpcs.Load(); n != 2 {
		t.Errorf("%d RPCs with a 1h margin, want 2", n)
	}

	c, rpcs = newClient(t)
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Fatal(err)
	}
	// Demo tokens live 300 s: the local copy cannot satisfy a 10 min MinTTL, and tokenvend
	// refuses a min_ttl beyond the token lifetime.
	_, err := c.GetToken(ctx(t), "demo", tokenvend.MinTTL(10*time.Minute))
	if code := status.Code(err); code != codes.OutOfRange {
		t.Errorf("MinTTL(10m): code %v (%v), want OutOfRange", code, err)
	}
	if n := rpcs.Load(); n != 2 {
		t.Errorf("%d RPCs, want 2 (MinTTL beyond the cached token must ask the server)", n)
	}
}

func TestUnknownProfileIsNotFound(t *testing.T) {
	c, _ := newClient(t)
	_, err := c.GetToken(ctx(t), "no-such-profile")
	if err == nil {
		t.Fatal("no error for an unknown profile")
	}
	if code := status.Code(err); code != codes.NotFound {
		t.Errorf("code = %v (%v), want NotFound", code, err)
	}
}

func TestReject(t *testing.T) {
	c, rpcs := newClient(t)
	old, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := c.Reject(ctx(t), "demo", old.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.AccessToken == old.AccessToken {
		t.Fatal("Reject returned the rejected token")
	}
	// The replacement is now the local copy.
	before := rpcs.Load()
	cur, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if cur.AccessToken != fresh.AccessToken || rpcs.Load() != before {
		t.Error("GetToken after Reject did not serve the replacement from the local cache")
	}
	// A late report of the old token neither drops the local copy nor makes tokenvend
	// fetch again: it answers with the current token.
	again, err := c.Reject(ctx(t), "demo", old.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if again.AccessToken != fresh.AccessToken {
		t.Error("a second report of the old token replaced the token again")
	}
	if cur, _ := c.GetToken(ctx(t), "demo"); cur.AccessToken != fresh.AccessToken {
		t.Error("the local copy changed")
	}
}

func TestCallerContextCancelled(t *testing.T) {
	c, _ := newClient(t)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.GetToken(cctx, "demo"); err == nil {
		t.Error("no error with a cancelled context")
	}
	// The cancelled caller must not poison the client for others.
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Error(err)
	}
}

func TestTokenIsRedacted(t *testing.T) {
	c, _ := newClient(t)
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("got", "token", tok, "value", *tok)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("got", "token", tok)
	out := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", tok, tok, tok, tok, *tok, *tok, *tok) + logged.String()
	// The signature alone is enough to tell: it is the secret part.
	sig := tok.AccessToken[strings.LastIndex(tok.AccessToken, ".")+1:]
	if strings.Contains(out, sig) {
		t.Errorf("formatted token leaks the secret: %s", out)
	}
	if !strings.Contains(out, "demo") || !strings.Contains(out, "redacted") {
		t.Errorf("formatted token lost its useful parts: %s", out)
	}
}

func TestServiceAccountTokenFile(t *testing.T) {
	path := t.TempDir() + "/token"
	if err := os.WriteFile(path, []byte("sa-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := newClient(t, tokenvend.WithServiceAccountTokenFile(path))
	if _, err := c.GetToken(ctx(t), "demo"); err != nil {
		t.Fatalf("GetToken with a ServiceAccount token: %v", err)
	}
	// Without the file the call fails before reaching the server.
	c, _ = newClient(t, tokenvend.WithServiceAccountTokenFile(path+".missing"))
	_, err := c.GetToken(ctx(t), "demo")
	if code := status.Code(err); code != codes.Unauthenticated {
		t.Errorf("missing token file: code %v (%v), want Unauthenticated", code, err)
	}
}
