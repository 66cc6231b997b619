// Package tokenvend is the Go client of tokenvend, a gRPC service that hands out OAuth 2.0
// access tokens by profile name so that services hold no client secret.
//
// A [Client] keeps a local copy of each profile's token and asks tokenvend again only when
// that copy gets close to its expiry, so a token costs one in-process map look-up on the
// hot path. Concurrent callers that miss the local copy share one RPC.
//
// For HTTP, wrap a transport with [Transport]: it puts every header of the token on the
// request and, on a 401 from the upstream API, reports the token as rejected and retries
// once with the fresh one. [TokenSource] adapts a profile to golang.org/x/oauth2.
//
// Tokens are secrets: [Token] redacts itself when formatted or logged, and nothing in this
// package logs one.
package tokenvend

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenvend/tokenvend/client/go/tokenvendpb"
)

// DefaultRefreshMargin is how long before its expiry a locally cached token is replaced.
// It leaves room for clock skew and for the request that carries the token to arrive.
const DefaultRefreshMargin = 60 * time.Second

// DefaultFetchTimeout bounds one GetToken RPC when the caller's context has no deadline.
const DefaultFetchTimeout = 30 * time.Second

// Client asks tokenvend for tokens and caches them locally. It is safe for concurrent use;
// create one per process and target, and share it.
type Client struct {
	conn     grpc.ClientConnInterface
	closer   *grpc.ClientConn // non-nil only when the Client created the connection
	rpc      tokenvendpb.TokenServiceClient
	callOpts []grpc.CallOption
	margin   time.Duration
	timeout  time.Duration
	now      func() time.Time

	mu     sync.Mutex
	tokens map[string]*Token
	group  singleflight.Group
}

type options struct {
	creds        credentials.TransportCredentials
	dialOpts     []grpc.DialOption
	saTokenFile  string
	margin       time.Duration
	fetchTimeout time.Duration
}

// An Option configures a [Client].
type Option func(*options)

// WithTransportCredentials sets the TLS (or other) credentials of the connection. Without
// it the connection is plaintext, which suits a tokenvend on loopback or behind a mesh.
// Ignored by [NewClientFromConn].
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = c }
}

// WithDialOptions adds options to the grpc.NewClient call, for interceptors, keepalive,
// a custom dialer and the like. Ignored by [NewClientFromConn].
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithServiceAccountTokenFile sends the content of path as "authorization: Bearer
// <content>" on every call, so that tokenvend can tell who the caller is. Meant for a
// Kubernetes projected ServiceAccount token: the file is re-read when it changes and at
// least every minute, because the kubelet rotates it in place.
//
// The token is sent over plaintext connections too, since tokenvend usually runs on
// loopback or inside the cluster network; use [WithTransportCredentials] otherwise.
func WithServiceAccountTokenFile(path string) Option {
	return func(o *options) { o.saTokenFile = path }
}

// WithRefreshMargin sets how long before expiry a locally cached token is replaced
// (default [DefaultRefreshMargin]). Zero or negative means the default.
func WithRefreshMargin(d time.Duration) Option {
	return func(o *options) { o.margin = d }
}

// WithFetchTimeout bounds each GetToken RPC (default [DefaultFetchTimeout]). Callers whose
// own context ends sooner stop waiting; the RPC goes on for the others that share it.
func WithFetchTimeout(d time.Duration) Option {
	return func(o *options) { o.fetchTimeout = d }
}

// NewClient creates a client of the tokenvend at target, such as "127.0.0.1:50051" or
// "dns:///tokenvend.tokenvend.svc:50051". Like grpc.NewClient it does not connect until
// the first call. Close it when done.
func NewClient(target string, opts ...Option) (*Client, error) {
	o := collect(opts)
	creds := o.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, o.dialOpts...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, err
	}
	c := newClient(conn, o)
	c.closer = conn
	return c, nil
}

// NewClientFromConn creates a client over an existing connection, which the caller keeps
// owning: [Client.Close] leaves it open.
func NewClientFromConn(conn grpc.ClientConnInterface, opts ...Option) *Client {
	return newClient(conn, collect(opts))
}

func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.margin <= 0 {
		o.margin = DefaultRefreshMargin
	}
	if o.fetchTimeout <= 0 {
		o.fetchTimeout = DefaultFetchTimeout
	}
	return o
}

func newClient(conn grpc.ClientConnInterface, o options) *Client {
	c := &Client{
		conn:    conn,
		rpc:     tokenvendpb.NewTokenServiceClient(conn),
		margin:  o.margin,
		timeout: o.fetchTimeout,
		now:     time.Now,
		tokens:  make(map[string]*Token),
	}
	if o.saTokenFile != "" {
		// A call option rather than a dial option, so that it also applies to connections
		// passed in by the caller.
		c.callOpts = append(c.callOpts, grpc.PerRPCCredentials(newFileCredentials(o.saTokenFile)))
	}
	return c
}

// Close closes the connection if the Client created it.
func (c *Client) Close() error {
	if c.closer != nil {
		return c.closer.Close()
	}
	return nil
}

// RPC returns the generated gRPC client on the Client's connection, for the calls this
// package does not wrap (ListProfiles, WatchToken). It bypasses the local cache.
func (c *Client) RPC() tokenvendpb.TokenServiceClient { return c.rpc }

// CallOptions returns the call options the Client adds to its own RPCs (the
// ServiceAccount credentials, if configured), for use with [Client.RPC].
func (c *Client) CallOptions() []grpc.CallOption {
	return append([]grpc.CallOption(nil), c.callOpts...)
}

type getOptions struct {
	minTTL time.Duration
}

// A GetOption configures one [Client.GetToken] call.
type GetOption func(*getOptions)

// MinTTL asks for a token that stays valid at least d (plus the refresh margin, for the
// local copy). tokenvend answers OUT_OF_RANGE when the profile's tokens live shorter.
func MinTTL(d time.Duration) GetOption {
	return func(o *getOptions) { o.minTTL = d }
}

// GetToken returns a valid token for profile: the local copy while it has more than the
// refresh margin (plus any [MinTTL]) left, else a fresh one from tokenvend.
//
// Errors are gRPC status errors; use status.Code(err) to tell them apart: NotFound for an
// unknown profile, Unavailable when the identity provider is down (retry with backoff),
// FailedPrecondition when it refused the profile's credentials, OutOfRange when the
// profile's tokens live shorter than MinTTL.
//
// The returned Token is the caller's own copy.
func (c *Client) GetToken(ctx context.Context, profile string, opts ...GetOption) (*Token, error) {
	var o getOptions
	for _, opt := range opts {
		opt(&o)
	}
	if t := c.cached(profile, o.minTTL); t != nil {
		return t.clone(), nil
	}
	key := "get\x00" + profile + "\x00" + o.minTTL.String()
	return c.fetch(ctx, key, &tokenvendpb.GetTokenRequest{
		Profile: profile,
		MinTtl:  minTTLProto(o.minTTL),
	})
}

// Reject reports that the upstream API refused token (an HTTP 401) and returns the token
// to use instead. The local copy is dropped only if it is that token, so a late report of
// an already replaced token costs no refresh; likewise tokenvend replaces its token once
// however many callers report it.
func (c *Client) Reject(ctx context.Context, profile, token string) (*Token, error) {
	c.mu.Lock()
	if t, ok := c.tokens[profile]; ok && t.AccessToken == token {
		delete(c.tokens, profile)
	}
	c.mu.Unlock()
	// The rejected token is part of the key so that concurrent reports of the same token
	// share one RPC, but the key is never logged or exposed.
	key := "reject\x00" + profile + "\x00" + token
	return c.fetch(ctx, key, &tokenvendpb.GetTokenRequest{
		Profile:       profile,
		RejectedToken: token,
	})
}

// cached returns the local copy of profile's token if it is fresh enough.
func (c *Client) cached(profile string, minTTL time.Duration) *Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tokens[profile]
	if !ok || t.ExpiresAt.Sub(c.now()) <= c.margin+minTTL {
		return nil
	}
	return t
}

func (c *Client) fetch(ctx context.Context, key string, req *tokenvendpb.GetTokenRequest) (*Token, error) {
	// The RPC runs detached from the first caller's cancellation, because other callers
	// may be sharing it; each caller still stops waiting when its own context ends.
	ch := c.group.DoChan(key, func() (any, error) {
		rctx, cancel := c.rpcContext(ctx)
		defer cancel()
		pb, err := c.rpc.GetToken(rctx, req, c.callOpts...)
		if err != nil {
			return nil, err
		}
		if pb.GetAccessToken() == "" {
			return nil, errNoToken
		}
		t := fromProto(pb)
		c.store(req.Profile, t)
		return t, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Token).clone(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// rpcContext keeps ctx's values (tracing, metadata) but not its cancellation, and uses
// ctx's deadline when there is one so that tokenvend can answer DEADLINE_EXCEEDED in time.
func (c *Client) rpcContext(ctx context.Context) (context.Context, context.CancelFunc) {
	detached := context.WithoutCancel(ctx)
	if d, ok := ctx.Deadline(); ok {
		return context.WithDeadline(detached, d)
	}
	return context.WithTimeout(detached, c.timeout)
}

// store keeps t unless the local copy already outlives it, so that a slow, older answer
// does not replace a newer one fetched meanwhile.
func (c *Client) store(profile string, t *Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.tokens[profile]; ok && cur.ExpiresAt.After(t.ExpiresAt) {
		return
	}
	c.tokens[profile] = t
}

func minTTLProto(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// Token is an access token with what is needed to use it. It redacts the token when
// formatted with fmt or logged with log/slog.
type Token struct {
	// AccessToken is the secret itself.
	AccessToken string
	// TokenType is "Bearer" for bearer tokens.
	TokenType string
	// ExpiresAt is when the token stops being valid.
	ExpiresAt time.Time
	// Scopes are the granted scopes.
	Scopes []string
	// Headers are the headers to put on the upstream request, names in lower case:
	// "authorization" plus any companion headers the profile configures.
	Headers map[string]string
	// Profile is the profile the token belongs to.
	Profile string
}

func fromProto(pb *tokenvendpb.Token) *Token {
	t := &Token{
		AccessToken: pb.GetAccessToken(),
		TokenType:   pb.GetTokenType(),
		Scopes:      append([]string(nil), pb.GetScopes()...),
		Headers:     make(map[string]string, len(pb.GetHeaders())),
		Profile:     pb.GetProfile(),
	}
	if pb.GetExpiresAt() != nil {
		t.ExpiresAt = pb.GetExpiresAt().AsTime()
	}
	for k, v := range pb.GetHeaders() {
		t.Headers[strings.ToLower(k)] = v
	}
	return t
}

func (t *Token) clone() *Token {
	c := *t
	c.Scopes = append([]string(nil), t.Scopes...)
	c.Headers = make(map[string]string, len(t.Headers))
	for k, v := range t.Headers {
		c.Headers[k] = v
	}
	return &c
}

// String describes the token without its secret parts.
func (t Token) String() string {
	var b strings.Builder
	b.WriteString("tokenvend.Token{Profile: ")
	b.WriteString(t.Profile)
	b.WriteString(", TokenType: ")
	b.WriteString(t.TokenType)
	b.WriteString(", ExpiresAt: ")
	b.WriteString(t.ExpiresAt.UTC().Format(time.RFC3339))
	b.WriteString(", Scopes: [")
	b.WriteString(strings.Join(t.Scopes, " "))
	b.WriteString("], AccessToken: <redacted>, Headers: <")
	b.WriteString(strings.Join(t.headerNames(), ","))
	b.WriteString(" redacted>}")
	return b.String()
}

// GoString keeps %#v from printing the fields.
func (t Token) GoString() string { return t.String() }

// LogValue keeps log/slog from printing the fields.
func (t Token) LogValue() slog.Value { return slog.StringValue(t.String()) }

func (t Token) headerNames() []string {
	names := make([]string, 0, len(t.Headers))
	for k := range t.Headers {
		names = append(names, k)
	}
	slices.Sort(names) // map order is random
	return names
}

// errNoToken guards the cache against an answer without a token, which a conforming
// server never sends.
var errNoToken = errors.New("tokenvend: the server returned an empty access token")
