package tokenvend

import (
	"context"
	"errors"
	"io"
	"net/http"

	"golang.org/x/oauth2"
)

// Transport is an http.RoundTripper that authenticates each request with a token of
// Profile. It sets every header of the token (authorization and any companion header such
// as an API key), and when the upstream API answers 401 it reports that token to tokenvend
// as rejected and sends the request once more with the replacement. A request whose body
// cannot be replayed (a body but no GetBody) is not retried, and a second 401 is returned
// to the caller as is.
//
//	httpClient := &http.Client{Transport: &tokenvend.Transport{Client: tv, Profile: "jakamo"}}
type Transport struct {
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// Client vends the tokens. Required.
	Client *Client
	// Profile is the tokenvend profile whose tokens are used. Required.
	Profile string
}

// maxDrain bounds how much of a 401 body is read so its connection can be reused.
const maxDrain = 64 << 10

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	tok, err := t.token(ctx)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	resp, err := t.base().RoundTrip(authorize(req, tok))
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !replayable(req) {
		return resp, err
	}

	fresh, err := t.Client.Reject(ctx, t.Profile, tok.AccessToken)
	if err != nil || fresh.AccessToken == tok.AccessToken {
		// Without a different token a retry would only repeat the 401; the caller gets the
		// upstream answer rather than an error about tokenvend.
		return resp, nil
	}
	retry := authorize(req, fresh)
	if req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return resp, nil
		}
		retry.Body = body
	}
	_, _ = io.CopyN(io.Discard, resp.Body, maxDrain)
	_ = resp.Body.Close()
	return t.base().RoundTrip(retry)
}

func (t *Transport) token(ctx context.Context) (*Token, error) {
	if t.Client == nil || t.Profile == "" {
		return nil, errors.New("tokenvend: Transport needs a Client and a Profile")
	}
	return t.Client.GetToken(ctx, t.Profile)
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// authorize returns a copy of req with the token's headers; a RoundTripper must not
// modify the caller's request.
func authorize(req *http.Request, tok *Token) *http.Request {
	r := req.Clone(req.Context())
	// Clone copies the Body field; the first attempt consumes the caller's body as usual.
	r.Body = req.Body
	if len(tok.Headers) == 0 {
		r.Header.Set("Authorization", tok.TokenType+" "+tok.AccessToken)
	}
	for k, v := range tok.Headers {
		r.Header.Set(k, v)
	}
	return r
}

func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// TokenSource returns an oauth2.TokenSource for profile, so that code written for
// golang.org/x/oauth2 (clientcredentials.Config.TokenSource, oauth2.NewClient, a gRPC
// oauth.TokenSource) can use tokenvend instead. ctx is used for every GetToken call.
//
// oauth2.Transport only sets the Authorization header and knows nothing of rejected
// tokens; prefer [Transport] for plain HTTP, and for profiles with companion headers.
func TokenSource(ctx context.Context, c *Client, profile string) oauth2.TokenSource {
	return &tokenSource{ctx: ctx, client: c, profile: profile}
}

type tokenSource struct {
	ctx     context.Context
	client  *Client
	profile string
}

// Token implements oauth2.TokenSource.
func (s *tokenSource) Token() (*oauth2.Token, error) {
	t, err := s.client.GetToken(s.ctx, s.profile)
	if err != nil {
		return nil, err
	}
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.ExpiresAt}, nil
}
