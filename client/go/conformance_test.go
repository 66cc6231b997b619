package tokenvend_test

// The conformance scenarios every client runs (client/README.md), against the real
// server. TestConformance_http_401_retried_once is in http_test.go with the other
// Transport tests.

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

func TestConformance_cache_hit_no_rpc(t *testing.T) {
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

func TestConformance_single_flight(t *testing.T) {
	c, rpcs := newClient(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	tokens := make([]string, 50)
	for i := range tokens {
		wg.Go(func() {
			<-start
			tok, err := c.GetToken(ctx(t), "demo")
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = tok.AccessToken
		})
	}
	close(start)
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

func TestConformance_reject_coalesced(t *testing.T) {
	c, rpcs := newClient(t)
	old, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	fresh := make([]string, 100)
	for i := range fresh {
		wg.Go(func() {
			<-start
			tok, err := c.Reject(ctx(t), "demo", old.AccessToken)
			if err != nil {
				t.Error(err)
				return
			}
			fresh[i] = tok.AccessToken
		})
	}
	close(start)
	wg.Wait()
	if n := rpcs.Load() - 1; n > 2 || n < 1 {
		t.Errorf("%d RPCs for 100 concurrent rejects of one token, want 1 or 2", n)
	}
	for _, tok := range fresh {
		if tok == old.AccessToken {
			t.Fatal("a reject returned the rejected token")
		}
		if tok != fresh[0] {
			t.Fatal("concurrent rejects got different replacements")
		}
	}

	// The replacement is now the local copy, and a late report of the old token makes no
	// RPC: the local copy already replaced it.
	before := rpcs.Load()
	cur, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Reject(ctx(t), "demo", old.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if cur.AccessToken != fresh[0] || again.AccessToken != fresh[0] {
		t.Error("after the reject, the local copy is not the replacement")
	}
	if n := rpcs.Load() - before; n != 0 {
		t.Errorf("%d RPCs for a get and a late reject of a replaced token, want 0", n)
	}
}

// http_401_retried_once: see http_test.go.

func TestConformance_always_401_bounded(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("always401", 300*time.Second)
	srv := startServer(t, serverConfig+"profiles:\n"+is.profileYAML(t, "always401"), "")

	// One caller after another: each call is sent twice, and costs at most two RPCs.
	c, rpcs := newClientOf(t, srv.addr)
	api := newUpstream(t, http.StatusUnauthorized)
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "always401"}}
	const calls = 4
	for range calls {
		resp, err := hc.Get(api.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want the upstream's 401", resp.StatusCode)
		}
	}
	if auth, _ := api.requests(); len(auth) != 2*calls {
		t.Errorf("%d upstream requests for %d calls, want each sent twice", len(auth), calls)
	}
	if n := rpcs.Load(); n > 2*calls {
		t.Errorf("%d RPCs for %d calls, want at most 2 per call", n, calls)
	}
	if n := is.count("always401"); n > 2*calls {
		t.Errorf("%d provider requests for %d calls, want at most 2 per call", n, calls)
	}

	// Callers at the same time: the upstream holds every first request until all have
	// arrived, so that all of them report the same token together.
	const concurrent = 20
	c2, rpcs2 := newClientOf(t, srv.addr)
	provider := is.count("always401")
	var mu sync.Mutex
	arrived, all := 0, make(chan struct{})
	var sent int
	held := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sent++
		if arrived < concurrent {
			arrived++
			if arrived == concurrent {
				close(all)
			}
			mu.Unlock()
			<-all
		} else {
			mu.Unlock()
		}
		w.WriteHeader(http.StatusUnauthorized)
	})
	api2 := httptest.NewServer(held)
	defer api2.Close()
	hc2 := &http.Client{Transport: &tokenvend.Transport{Client: c2, Profile: "always401"}}
	var wg sync.WaitGroup
	for range concurrent {
		wg.Go(func() {
			resp, err := hc2.Get(api2.URL)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if sent != 2*concurrent {
		t.Errorf("%d upstream requests for %d calls, want each sent twice", sent, concurrent)
	}
	// One get and one coalesced reject.
	if n := rpcs2.Load(); n > 2 {
		t.Errorf("%d RPCs for %d concurrent calls that all got 401, want 2", n, concurrent)
	}
	if n := is.count("always401") - provider; n > 2 {
		t.Errorf("%d provider requests for %d concurrent calls, want at most 2", n, concurrent)
	}
}

func TestConformance_deadline_bounds_fetch(t *testing.T) {
	t.Parallel()
	hung := hungListener(t)
	c, _ := newClientOf(t, hung)

	// A context deadline.
	cctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.GetToken(cctx, "demo")
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("GetToken with a 1 s deadline took %v", d)
	}
	var te *tokenvend.Error
	if !errors.As(err, &te) || te.Code != codes.DeadlineExceeded || !tokenvend.Retryable(err) {
		t.Errorf("err = %v, want a retryable *tokenvend.Error with DeadlineExceeded", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want errors.Is(err, context.DeadlineExceeded)", err)
	}

	// An http.Client timeout: the error is net/http's own (*url.Error), still retryable,
	// and the upstream never sees the request.
	api := newUpstream(t, http.StatusOK)
	hc := &http.Client{Timeout: time.Second, Transport: &tokenvend.Transport{Client: c, Profile: "demo"}}
	start = time.Now()
	_, err = hc.Get(api.URL)
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("http.Client with a 1 s timeout took %v", d)
	}
	var ue *url.Error
	if !errors.As(err, &ue) || !ue.Timeout() || !tokenvend.Retryable(err) {
		t.Errorf("err = %v, want a *url.Error that is a timeout and retryable", err)
	}
	if auth, _ := api.requests(); len(auth) != 0 {
		t.Error("the request reached the upstream without a token")
	}
}

func TestDefaultTimeoutIsTenSeconds(t *testing.T) {
	t.Parallel()
	c, _ := newClientOf(t, hungListener(t))
	start := time.Now()
	_, err := c.GetToken(context.Background(), "demo")
	d := time.Since(start)
	if d < 9500*time.Millisecond || d > 11500*time.Millisecond {
		t.Errorf("GetToken without a deadline gave up after %v, want 10 s", d)
	}
	if status.Code(err) != codes.DeadlineExceeded || !tokenvend.Retryable(err) {
		t.Errorf("err = %v, want a retryable DeadlineExceeded", err)
	}
}

func TestConformance_error_categories(t *testing.T) {
	c, _ := newClient(t)
	_, err := c.GetToken(ctx(t), "no-such-profile")
	var te *tokenvend.Error
	if !errors.As(err, &te) || te.Code != codes.NotFound || status.Code(err) != codes.NotFound {
		t.Fatalf("unknown profile: %v, want a *tokenvend.Error with NotFound", err)
	}
	if tokenvend.Retryable(err) || te.Retryable() {
		t.Error("NotFound is retryable")
	}
	if te.Profile != "no-such-profile" || te.Op != "GetToken" {
		t.Errorf("error names %s %q", te.Op, te.Profile)
	}

	// Nothing listens on a port just released.
	down, _ := newClientOf(t, freeAddr())
	_, err = down.GetToken(ctx(t), "demo")
	if !errors.As(err, &te) || te.Code != codes.Unavailable || !tokenvend.Retryable(err) {
		t.Errorf("unreachable server: %v, want a retryable Unavailable", err)
	}
	// The message says why (the refused connection), and is no token.
	if msg := err.Error(); len(msg) < 40 {
		t.Errorf("message %q does not give the cause", msg)
	}
}

// The short-lived tokens below live 10 s: long enough for tokenvend's refresh at ~80 %
// and the client's margin at 90 % to be a second apart, short enough for CI.
const shortLifetime = 10 * time.Second

func TestConformance_refresh_margin_fraction(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("short", shortLifetime)
	srv := startServer(t, serverConfig+"profiles:\n"+is.profileYAML(t, "short"), "")
	c, rpcs := newClientOf(t, srv.addr)
	// The same token with the margin capped below 10 %.
	capped, cappedRPCs := newClientOf(t, srv.addr, tokenvend.WithMaxRefreshMargin(300*time.Millisecond))

	first, err := c.GetToken(ctx(t), "short")
	if err != nil {
		t.Fatal(err)
	}
	received := time.Now()
	if tok, err := capped.GetToken(ctx(t), "short"); err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("capped client: %v", err)
	}
	type change struct {
		at       time.Duration
		provider int
	}
	var changes []change
	cur := first.AccessToken
	// A tight loop across the margin and past the first token's expiry.
	for time.Since(received) < shortLifetime*3/2 {
		tok, err := c.GetToken(ctx(t), "short")
		if err != nil {
			t.Fatal(err)
		}
		if time.Until(tok.ExpiresAt) <= 0 {
			t.Fatal("served an expired token")
		}
		if tok.AccessToken != cur {
			cur = tok.AccessToken
			changes = append(changes, change{time.Since(received), is.count("short")})
		}
		if _, err := capped.GetToken(ctx(t), "short"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}

	reqs := rpcs.requests()
	for _, r := range reqs {
		if r.minTTL {
			t.Error("the client sent a min_ttl of its own")
		}
	}
	// The first token was used until 90 % of its life, then replaced by the one tokenvend
	// had already fetched at ~80 %: no provider request waited on the client's RPC.
	if len(reqs) < 2 {
		t.Fatalf("%d RPCs in 1.5 lifetimes, want the first token replaced", len(reqs))
	}
	second := reqs[1].at.Sub(received)
	if second < shortLifetime*85/100 || second > shortLifetime*95/100 {
		t.Errorf("second RPC %v after the first token arrived, want at ~90 %% of %v", second, shortLifetime)
	}
	if len(changes) == 0 || changes[0].provider != 2 {
		t.Errorf("token changes %+v: want the second token to be tokenvend's refresh ahead", changes)
	}
	capReqs := cappedRPCs.requests()
	if len(capReqs) < 2 {
		t.Fatalf("capped client: %d RPCs", len(capReqs))
	}
	if second := capReqs[1].at.Sub(received); second < shortLifetime-600*time.Millisecond ||
		second > shortLifetime-100*time.Millisecond {
		t.Errorf("capped client asked %v after the first token, want 300 ms before its expiry", second)
	}
	// 1 + one per later token (each lives ~0.85 of the first one's lifetime here).
	if len(reqs) > 3 {
		t.Errorf("%d RPCs for a tight loop over 1.5 lifetimes, want at most 3", len(reqs))
	}
}

// A token that tokenvend cannot replace (the provider is down) is served inside its margin,
// asking tokenvend again at most once a second, until it expires.
func TestRefreshMarginWhileTokenvendCannotRefresh(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("stuck", shortLifetime)
	is.refuseAfterFirst("stuck")
	srv := startServer(t, serverConfig+"profiles:\n"+is.profileYAML(t, "stuck"), "")
	c, rpcs := newClientOf(t, srv.addr)

	first, err := c.GetToken(ctx(t), "stuck")
	if err != nil {
		t.Fatal(err)
	}
	for time.Until(first.ExpiresAt) > 200*time.Millisecond {
		tok, err := c.GetToken(ctx(t), "stuck")
		if err != nil {
			t.Fatalf("%v before expiry: %v", time.Until(first.ExpiresAt), err)
		}
		if tok.AccessToken != first.AccessToken {
			t.Fatal("a new token, though the provider refuses")
		}
		time.Sleep(time.Millisecond)
	}
	// The margin is 1 s (10 % of 10 s): one RPC on entering it, then at most one a second.
	if n := rpcs.Load(); n < 2 || n > 3 {
		t.Errorf("%d RPCs, want 2 or 3 (the first, then at most one a second in the margin)", n)
	}
	time.Sleep(time.Until(first.ExpiresAt) + 100*time.Millisecond)
	_, err = c.GetToken(ctx(t), "stuck")
	if status.Code(err) != codes.Unavailable || !tokenvend.Retryable(err) {
		t.Errorf("after expiry: %v, want a retryable Unavailable", err)
	}
}

func TestConformance_watch_live_copy(t *testing.T) {
	c, rpcs := newClient(t)
	wctx, stop := context.WithCancel(context.Background())
	defer stop()
	if err := c.Watch(wctx, "demo"); err != nil {
		t.Fatal(err)
	}
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	// Another process reports the token: tokenvend replaces it, and the stream brings the
	// replacement into this client's copy.
	other, _ := newClient(t)
	fresh, err := other.Reject(ctx(t), "demo", tok.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.AccessToken == tok.AccessToken {
		t.Fatal("tokenvend did not replace the token")
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		cur, err := c.GetToken(ctx(t), "demo")
		if err != nil {
			t.Fatal(err)
		}
		if cur.AccessToken == fresh.AccessToken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watched copy did not follow the replacement")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := rpcs.Load(); n != 0 {
		t.Errorf("%d GetToken RPCs while watching, want 0", n)
	}
	if err := c.Watch(ctx(t), "no-such-profile"); status.Code(err) != codes.NotFound || tokenvend.Retryable(err) {
		t.Errorf("watching an unknown profile: %v, want NotFound", err)
	}
}

// The watch reconnects after tokenvend restarts, and follows the new server's token.
func TestWatchReconnects(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("watched", 300*time.Second)
	config := serverConfig + "profiles:\n" + is.profileYAML(t, "watched")
	srv := startServer(t, config, "")
	c, rpcs := newClientOf(t, srv.addr)
	if err := c.Watch(context.Background(), "watched"); err != nil {
		t.Fatal(err)
	}
	before, _ := c.GetToken(ctx(t), "watched")
	srv.stop()
	// A restarted tokenvend has an empty cache: it fetches a new token.
	srv = startServer(t, config, srv.addr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		cur, err := c.GetToken(ctx(t), "watched")
		if err != nil {
			t.Fatal(err)
		}
		if cur.AccessToken != before.AccessToken {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch did not reconnect to the restarted server")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := rpcs.Load(); n != 0 {
		t.Errorf("%d GetToken RPCs while watching, want 0", n)
	}
}

func TestConformance_stale_copy_while_unreachable(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("stale", shortLifetime)
	srv := startServer(t, serverConfig+"profiles:\n"+is.profileYAML(t, "stale"), "")
	c, _ := newClientOf(t, srv.addr)
	first, err := c.GetToken(ctx(t), "stale")
	if err != nil {
		t.Fatal(err)
	}
	refuser, _ := newClientOf(t, srv.addr)
	if _, err := refuser.GetToken(ctx(t), "stale"); err != nil {
		t.Fatal(err)
	}
	srv.stop()

	// A copy the API refused is no fallback: with its report failing, it is not served.
	if _, err := refuser.Reject(ctx(t), "stale", first.AccessToken); !tokenvend.Retryable(err) {
		t.Fatalf("reject with tokenvend stopped: %v, want a retryable error", err)
	}
	if tok, err := refuser.GetToken(ctx(t), "stale"); err == nil {
		t.Fatalf("served %v, the token just rejected", tok)
	}

	// Outside the margin the copy is served as always; inside it the client asks, finds
	// tokenvend gone, and serves the copy rather than failing.
	inMargin := time.Until(first.ExpiresAt) - shortLifetime/20
	time.Sleep(inMargin)
	for range 3 {
		tok, err := c.GetToken(ctx(t), "stale")
		if err != nil {
			t.Fatalf("%v before expiry, tokenvend stopped: %v", time.Until(first.ExpiresAt), err)
		}
		if tok.AccessToken != first.AccessToken {
			t.Fatal("served another token")
		}
	}
	// An expired copy is never served.
	time.Sleep(time.Until(first.ExpiresAt) + 50*time.Millisecond)
	if _, err := c.GetToken(ctx(t), "stale"); !tokenvend.Retryable(err) || status.Code(err) != codes.Unavailable {
		t.Errorf("after expiry: %v, want a retryable Unavailable", err)
	}
}

func TestConformance_service_account_token(t *testing.T) {
	t.Parallel()
	is := newIssuer(t)
	is.profile("orders-api", 300*time.Second)
	sa := newServiceAccounts(t)
	config := serverConfig +
		"  auth:\n    service_account:\n      issuer: " + saIssuer + "\n      jwks_file: " + sa.jwksFile + "\n" +
		"profiles:\n" + is.profileYAML(t, "orders-api", `allow: ["system:serviceaccount:orders:app"]`)
	srv := startServer(t, config, "")

	path := t.TempDir() + "/token"
	if err := os.WriteFile(path, []byte(sa.token(t, "billing", "app")), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := newClientOf(t, srv.addr, tokenvend.WithServiceAccountTokenFile(path))
	// tokenvend verified the token and knows the caller: billing may not use the profile.
	if _, err := c.GetToken(ctx(t), "orders-api"); status.Code(err) != codes.NotFound {
		t.Fatalf("as billing: %v, want NotFound", err)
	}
	// The kubelet rotates the file in place: the next call sends the new token.
	if err := os.WriteFile(path, []byte(sa.token(t, "orders", "app")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetToken(ctx(t), "orders-api"); err != nil {
		t.Fatalf("as orders after the file changed: %v", err)
	}

	// Without a token tokenvend does not know the caller.
	anon, _ := newClientOf(t, srv.addr)
	if _, err := anon.GetToken(ctx(t), "orders-api"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without a token: %v, want Unauthenticated", err)
	}
}
