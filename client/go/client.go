// Package tokenvend is the Go client of tokenvend, a gRPC service that hands out OAuth 2.0
// access tokens by profile name so that services hold no client secret.
//
// A [Client] keeps a local copy of each profile's token and asks tokenvend again only when
// that copy gets close to its expiry, so a token costs one in-process map look-up on the
// hot path. Concurrent callers that miss the local copy share one RPC, and so do
// concurrent reports of a token the API refused. [Client.Watch] keeps the copy current
// through a stream, so that no call waits.
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
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tokenvend/tokenvend/client/go/tokenvendpb"
)

// DefaultMaxRefreshMargin caps the refresh margin: a local copy is replaced when 10 % of
// its lifetime, or this, whichever is less, is left.
const DefaultMaxRefreshMargin = 60 * time.Second

// DefaultRefreshMargin is the old name of [DefaultMaxRefreshMargin].
//
// Deprecated: use DefaultMaxRefreshMargin.
const DefaultRefreshMargin = DefaultMaxRefreshMargin

// DefaultFetchTimeout bounds one RPC when the caller's context has no deadline.
const DefaultFetchTimeout = 10 * time.Second

// marginFraction is the share of a token's lifetime kept as its refresh margin. tokenvend
// replaces a token at about 80 % of its lifetime, so at 90 % the client's next RPC finds
// the replacement already in tokenvend's cache.
const marginFraction = 10

// retryInterval is how often a profile is asked again while tokenvend keeps answering
// with a token inside its margin (it could not refresh), or cannot be reached.
const retryInterval = time.Second

// Client asks tokenvend for tokens and caches them locally. It is safe for concurrent use;
// create one per process and target, and share it.
type Client struct {
	conn      grpc.ClientConnInterface
	closer    *grpc.ClientConn // non-nil only when the Client created the connection
	rpc       tokenvendpb.TokenServiceClient
	callOpts  []grpc.CallOption
	maxMargin time.Duration
	timeout   time.Duration
	now       func() time.Time
	// life ends when the Client is closed, and with it every watch.
	life context.Context
	stop context.CancelFunc

	mu      sync.Mutex
	entries map[string]*entry
	watches map[string]*watch
	group   singleflight.Group
}

// entry is the local state of one profile.
type entry struct {
	tok *Token
	// margin is min(10 % of tok's lifetime as received, the cap).
	margin time.Duration
	// retryAt: before it, a copy inside its margin is served without asking, because
	// tokenvend just answered with it again or could not be reached.
	retryAt time.Time
	// rejected is an access token reported by Reject whose replacement failed: it is
	// never served from the local copy.
	rejected string
	// reject is the RPC replacing tok, which later reports and gets wait for.
	reject *call
}

// call is one RPC shared by several callers.
type call struct {
	done chan struct{}
	tok  *Token
	err  error
}

type options struct {
	creds        credentials.TransportCredentials
	dialOpts     []grpc.DialOption
	saTokenFile  string
	maxMargin    time.Duration
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

// WithMaxRefreshMargin caps the refresh margin (default [DefaultMaxRefreshMargin]). A
// local copy is served while it has more than its margin left, the margin being 10 % of
// the token's lifetime but at most d. Zero or negative means the default.
func WithMaxRefreshMargin(d time.Duration) Option {
	return func(o *options) { o.maxMargin = d }
}

// WithRefreshMargin is the old name of [WithMaxRefreshMargin]. The margin used to be
// fixed; it is now 10 % of the token's lifetime, capped at d.
//
// Deprecated: use WithMaxRefreshMargin.
func WithRefreshMargin(d time.Duration) Option { return WithMaxRefreshMargin(d) }

// WithFetchTimeout bounds each RPC whose caller's context has no deadline (default
// [DefaultFetchTimeout], 10 s). Callers whose own context ends sooner stop waiting; a
// shared RPC goes on for the others.
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
	if o.maxMargin <= 0 {
		o.maxMargin = DefaultMaxRefreshMargin
	}
	if o.fetchTimeout <= 0 {
		o.fetchTimeout = DefaultFetchTimeout
	}
	return o
}

func newClient(conn grpc.ClientConnInterface, o options) *Client {
	life, stop := context.WithCancel(context.Background())
	c := &Client{
		conn:      conn,
		rpc:       tokenvendpb.NewTokenServiceClient(conn),
		maxMargin: o.maxMargin,
		timeout:   o.fetchTimeout,
		now:       time.Now,
		life:      life,
		stop:      stop,
		entries:   make(map[string]*entry),
		watches:   make(map[string]*watch),
	}
	if o.saTokenFile != "" {
		// A call option rather than a dial option, so that it also applies to connections
		// passed in by the caller.
		c.callOpts = append(c.callOpts, grpc.PerRPCCredentials(newFileCredentials(o.saTokenFile)))
	}
	return c
}

// Close ends every [Client.Watch] and closes the connection if the Client created it.
func (c *Client) Close() error {
	c.stop()
	if c.closer != nil {
		return c.closer.Close()
	}
	return nil
}

// RPC returns the generated gRPC client on the Client's connection, for the calls this
// package does not wrap (ListProfiles). It bypasses the local cache.
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

// MinTTL asks for a token that stays valid at least d. The local copy serves only while it
// has more than d plus its refresh margin left; tokenvend answers OUT_OF_RANGE when the
// profile's tokens live shorter than d.
func MinTTL(d time.Duration) GetOption {
	return func(o *getOptions) { o.minTTL = d }
}

// GetToken returns a valid token for profile: the local copy while it has more than its
// refresh margin (plus any [MinTTL]) left, else one from tokenvend. The margin is 10 % of
// the token's lifetime, at most 60 s ([WithMaxRefreshMargin]). Concurrent callers that
// miss share one RPC. The RPC carries no min_ttl unless the caller gave [MinTTL].
//
// While tokenvend cannot be reached, or answers with a token that is itself inside its
// margin (it could not refresh), the local copy is served as long as it has not expired,
// and tokenvend is asked again at most once a second.
//
// The context bounds the call; without a deadline each RPC gets 10 s
// ([WithFetchTimeout]). Errors are [*Error]s; status.Code(err) gives the gRPC code and
// [Retryable] whether to try again.
//
// The returned Token is the caller's own copy.
func (c *Client) GetToken(ctx context.Context, profile string, opts ...GetOption) (*Token, error) {
	var o getOptions
	for _, opt := range opts {
		opt(&o)
	}
	c.mu.Lock()
	e := c.entries[profile]
	if e != nil && e.reject != nil {
		// The local copy is being replaced after a 401: its replacement is the answer.
		cl := e.reject
		c.mu.Unlock()
		return c.wait(ctx, "GetToken", profile, cl)
	}
	t := c.usable(e, o.minTTL)
	c.mu.Unlock()
	if t != nil {
		return t.clone(), nil
	}
	return c.fetch(ctx, profile, o.minTTL)
}

// usable returns the local copy if it may be served without asking. c.mu is held.
func (c *Client) usable(e *entry, minTTL time.Duration) *Token {
	if e == nil || e.tok == nil || e.tok.AccessToken == e.rejected {
		return nil
	}
	now := c.now()
	left := e.tok.ExpiresAt.Sub(now)
	if left > e.margin+minTTL || (left > minTTL && now.Before(e.retryAt)) {
		return e.tok
	}
	return nil
}

// fetch asks tokenvend, sharing the RPC with concurrent callers asking the same.
func (c *Client) fetch(ctx context.Context, profile string, minTTL time.Duration) (*Token, error) {
	key := profile + "\x00" + minTTL.String()
	// The RPC runs detached from the first caller's cancellation, because other callers
	// may be sharing it; each caller still stops waiting when its own context ends.
	ch := c.group.DoChan(key, func() (any, error) {
		// A caller that found no usable copy may get here just after another caller's
		// RPC stored one and left the group: that copy is the answer, not a second RPC.
		c.mu.Lock()
		t := c.usable(c.entries[profile], minTTL)
		c.mu.Unlock()
		if t != nil {
			return t, nil
		}
		rctx, cancel := c.rpcContext(ctx)
		defer cancel()
		pb, err := c.rpc.GetToken(rctx, &tokenvendpb.GetTokenRequest{
			Profile: profile,
			MinTtl:  minTTLProto(minTTL),
		}, c.callOpts...)
		if err == nil && pb.GetAccessToken() == "" {
			err = errNoToken
		}
		if err != nil {
			if Retryable(err) {
				c.failed(profile)
			}
			return nil, err
		}
		return c.store(profile, fromProto(pb), ""), nil
	})
	var err error
	select {
	case r := <-ch:
		if r.Err == nil {
			return r.Val.(*Token).clone(), nil
		}
		err = r.Err
	case <-ctx.Done():
		err = ctx.Err()
	}
	if Retryable(err) {
		if t := c.stale(profile, minTTL); t != nil {
			return t, nil
		}
	}
	return nil, newError("GetToken", profile, err)
}

// stale returns a copy of the local token if it has not expired (nor been rejected),
// for when tokenvend cannot answer.
func (c *Client) stale(profile string, minTTL time.Duration) *Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[profile]
	if e == nil || e.tok == nil || e.tok.AccessToken == e.rejected ||
		e.tok.ExpiresAt.Sub(c.now()) <= minTTL {
		return nil
	}
	return e.tok.clone()
}

// failed spaces out the next attempt for a profile whose local copy is still served.
func (c *Client) failed(profile string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[profile]; e != nil {
		e.retryAt = c.now().Add(retryInterval)
	}
}

// Reject reports that the upstream API refused token (an HTTP 401) and returns the token
// to use instead.
//
// Reports are coalesced: while one report of the local copy is on its way to tokenvend,
// every other report (and every GetToken) of the profile waits for its answer, and a
// report of a token that is no longer the local copy makes no RPC at all: the local copy
// is already its replacement. tokenvend itself replaces a token once however many
// clients report it.
func (c *Client) Reject(ctx context.Context, profile, token string) (*Token, error) {
	c.mu.Lock()
	e := c.entry(profile)
	if e.reject == nil && e.tok != nil && e.tok.AccessToken != token {
		c.mu.Unlock()
		return c.GetToken(ctx, profile)
	}
	cl := e.reject
	if cl == nil {
		cl = &call{done: make(chan struct{})}
		e.reject = cl
		go c.runReject(ctx, profile, token, cl)
	}
	c.mu.Unlock()
	return c.wait(ctx, "Reject", profile, cl)
}

func (c *Client) runReject(ctx context.Context, profile, token string, cl *call) {
	rctx, cancel := c.rpcContext(ctx)
	defer cancel()
	pb, err := c.rpc.GetToken(rctx, &tokenvendpb.GetTokenRequest{
		Profile:       profile,
		RejectedToken: token,
	}, c.callOpts...)
	if err == nil && pb.GetAccessToken() == "" {
		err = errNoToken
	}
	if err == nil {
		cl.tok = c.store(profile, fromProto(pb), token)
	} else {
		cl.err = err
	}
	c.mu.Lock()
	e := c.entry(profile)
	if err != nil && e.tok != nil && e.tok.AccessToken == token {
		e.rejected = token
	}
	if e.reject == cl {
		e.reject = nil
	}
	c.mu.Unlock()
	close(cl.done)
}

// wait waits for a shared call, or for the caller's context.
func (c *Client) wait(ctx context.Context, op, profile string, cl *call) (*Token, error) {
	select {
	case <-cl.done:
		if cl.err != nil {
			return nil, newError(op, profile, cl.err)
		}
		return cl.tok.clone(), nil
	case <-ctx.Done():
		return nil, newError(op, profile, ctx.Err())
	}
}

// entry returns profile's entry, creating it. c.mu is held.
func (c *Client) entry(profile string) *entry {
	e := c.entries[profile]
	if e == nil {
		e = &entry{}
		c.entries[profile] = e
	}
	return e
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

// store makes t the local copy and returns the copy now held. An answer that expires
// before the local copy is dropped (a slow, older answer must not replace a newer one
// fetched meanwhile), unless the local copy is replacing, the token just rejected.
func (c *Client) store(profile string, t *Token, replacing string) *Token {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entry(profile)
	now := c.now()
	if cur := e.tok; cur != nil && cur.AccessToken != replacing && cur.AccessToken != e.rejected &&
		cur.ExpiresAt.After(t.ExpiresAt) {
		return cur
	}
	c.keep(e, t, now)
	return t
}

// keep makes t the local copy. c.mu is held.
func (c *Client) keep(e *entry, t *Token, now time.Time) {
	if e.tok == nil || e.tok.AccessToken != t.AccessToken {
		// A new token: its margin comes from the lifetime it has as it arrives. The same
		// token again keeps the margin it had, so that one tokenvend could not replace is
		// seen to be inside it.
		e.margin = min(max(t.ExpiresAt.Sub(now), 0)/marginFraction, c.maxMargin)
	}
	e.tok = t
	e.rejected = ""
	e.retryAt = time.Time{}
	if t.ExpiresAt.Sub(now) <= e.margin {
		e.retryAt = now.Add(retryInterval)
	}
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
var errNoToken = status.Error(codes.Internal, "tokenvend: the server returned an empty access token")
