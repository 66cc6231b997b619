package tokenvend_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	tokenvend "github.com/tokenvend/tokenvend/client/go"
)

// upstream is a stand-in for the resource API: it answers with the statuses it is given,
// in order (the last one repeats), and records what each request carried.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	statuses []int
	auth     []string
	bodies   []string
}

func newUpstream(t *testing.T, statuses ...int) *upstream {
	u := &upstream{statuses: statuses}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		n := len(u.auth)
		u.auth = append(u.auth, r.Header.Get("Authorization"))
		u.bodies = append(u.bodies, string(body))
		code := u.statuses[min(n, len(u.statuses)-1)]
		u.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, http.StatusText(code))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) requests() (auth, bodies []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.auth...), append([]string(nil), u.bodies...)
}

func TestConformance_http_401_retried_once(t *testing.T) {
	c, _ := newClient(t)
	api := newUpstream(t, http.StatusUnauthorized, http.StatusOK)
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "demo"}}

	// A POST with a replayable body, to check that the retry sends the body again.
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, api.URL+"/api/order/response",
		strings.NewReader("<order/>"))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "OK" {
		t.Fatalf("got %d %q, want 200 OK", resp.StatusCode, body)
	}

	auth, bodies := api.requests()
	if len(auth) != 2 {
		t.Fatalf("%d upstream requests, want 2", len(auth))
	}
	if auth[0] == auth[1] {
		t.Error("the retry carried the rejected token")
	}
	// What tokenvend now hands out (to a client with no local copy) is what the retry used.
	other, _ := newClient(t)
	now, err := other.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	if auth[1] != "Bearer "+now.AccessToken {
		t.Error("the retry did not carry tokenvend's current token")
	}
	if bodies[0] != "<order/>" || bodies[1] != "<order/>" {
		t.Errorf("bodies = %q, want the same body twice", bodies)
	}
}

func TestTransportReturnsAPersistent401(t *testing.T) {
	c, _ := newClient(t)
	api := newUpstream(t, http.StatusUnauthorized)
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "demo"}}

	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, api.URL, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status = %d, want 401", resp.StatusCode)
	}
	if auth, _ := api.requests(); len(auth) != 2 {
		t.Errorf("%d upstream requests, want exactly 2", len(auth))
	}
}

func TestTransportDoesNotRetryAnUnreplayableBody(t *testing.T) {
	c, rpcs := newClient(t)
	api := newUpstream(t, http.StatusUnauthorized, http.StatusOK)
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "demo"}}

	// Hiding the reader's type keeps http.NewRequest from setting GetBody.
	body := struct{ io.Reader }{bytes.NewReader([]byte("stream"))}
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, api.URL, body)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status = %d, want 401", resp.StatusCode)
	}
	if auth, _ := api.requests(); len(auth) != 1 {
		t.Errorf("%d upstream requests, want 1", len(auth))
	}
	if n := rpcs.Load(); n != 1 {
		t.Errorf("%d GetToken RPCs, want 1 (no rejection without a retry)", n)
	}
}

func TestTransportSetsAllTokenHeadersAndLeavesTheRequestAlone(t *testing.T) {
	c, _ := newClient(t)
	tok, err := c.GetToken(ctx(t), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var got http.Header
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
	}))
	defer api.Close()
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "demo"}}
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, api.URL, nil)
	req.Header.Set("Content-Type", "text/xml")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, v := range tok.Headers {
		if got.Get(k) != v {
			t.Errorf("header %s missing or different", k)
		}
	}
	if got.Get("Content-Type") != "text/xml" {
		t.Error("the caller's own header was lost")
	}
	if req.Header.Get("Authorization") != "" {
		t.Error("the caller's request was modified")
	}
}

func TestUnknownProfileFailsTheRequest(t *testing.T) {
	c, _ := newClient(t)
	api := newUpstream(t, http.StatusOK)
	hc := &http.Client{Transport: &tokenvend.Transport{Client: c, Profile: "no-such-profile"}}
	if _, err := hc.Get(api.URL); err == nil {
		t.Error("no error for an unknown profile")
	}
	if auth, _ := api.requests(); len(auth) != 0 {
		t.Error("the request was sent without a token")
	}
}

func TestTokenSourceWithOAuth2Client(t *testing.T) {
	c, _ := newClient(t)
	api := newUpstream(t, http.StatusOK)
	hc := oauth2.NewClient(ctx(t), tokenvend.TokenSource(ctx(t), c, "demo"))
	resp, err := hc.Get(api.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	tok, _ := c.GetToken(ctx(t), "demo")
	if auth, _ := api.requests(); len(auth) != 1 || auth[0] != "Bearer "+tok.AccessToken {
		t.Error("oauth2.NewClient did not send tokenvend's token")
	}

	ot, err := tokenvend.TokenSource(ctx(t), c, "demo").Token()
	if err != nil {
		t.Fatal(err)
	}
	if !ot.Valid() || ot.TokenType != "Bearer" || !ot.Expiry.Equal(tok.ExpiresAt) {
		t.Errorf("oauth2.Token: valid=%v type=%q expiry=%v", ot.Valid(), ot.TokenType, ot.Expiry)
	}
}
