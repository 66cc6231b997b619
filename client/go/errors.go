package tokenvend

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is what every [Client] call fails with. It carries the gRPC status code, so
// status.Code(err) keeps working, and says whether asking again can help. Inside
// [Transport] it is returned from RoundTrip, so http.Client hands it back wrapped in a
// *url.Error as it does with any transport error; errors.As finds it there.
type Error struct {
	// Op is the call that failed: "GetToken", "Reject" or "Watch".
	Op string
	// Profile is the profile asked for.
	Profile string
	// Code is the gRPC status code: from tokenvend, from the gRPC library (Unavailable
	// when tokenvend cannot be reached), or from the caller's context (DeadlineExceeded,
	// Canceled).
	Code codes.Code
	// Err is the cause: a gRPC status error or the context's error.
	Err error
}

func (e *Error) Error() string {
	msg := ""
	if e.Err != nil {
		msg = e.Err.Error()
		if s, ok := status.FromError(e.Err); ok {
			msg = s.Message()
		}
	}
	return fmt.Sprintf("tokenvend: %s %q: %s: %s", e.Op, e.Profile, e.Code, msg)
}

// Unwrap gives errors.Is and errors.As the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes a DeadlineExceeded or Canceled from tokenvend or the gRPC library match the
// context's errors too, as when the caller's own context ended first.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	return false
}

// GRPCStatus lets status.Code and status.FromError read the code.
func (e *Error) GRPCStatus() *status.Status {
	if s, ok := status.FromError(e.Err); ok && s.Code() == e.Code {
		return s
	}
	return status.New(e.Code, e.Error())
}

// Retryable reports whether asking again, after a backoff, can succeed.
func (e *Error) Retryable() bool { return retryableCode(e.Code) }

// Timeout reports whether a deadline passed; net/http's *url.Error and anything else that
// looks for a Timeout method sees it.
func (e *Error) Timeout() bool { return e.Code == codes.DeadlineExceeded }

// Retryable reports whether err is worth retrying with a backoff: tokenvend unreachable
// (Unavailable), a deadline that passed (DeadlineExceeded, also from a context or an
// http.Client timeout), a rate limit (ResourceExhausted) or a call cut short (Aborted).
// An unknown or forbidden profile (NotFound), refused caller credentials
// (Unauthenticated, PermissionDenied), a provider that refused the profile's credentials
// (FailedPrecondition) and the rest are not: retrying gives the same answer.
//
// It looks through wrapping (a *url.Error from http.Client, fmt.Errorf with %w).
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var te *Error
	if errors.As(err, &te) {
		return te.Retryable()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		return retryableCode(s.Code())
	}
	// An http.Client timeout that fired before the transport saw it.
	var timeout interface{ Timeout() bool }
	return errors.As(err, &timeout) && timeout.Timeout()
}

func retryableCode(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}

// newError wraps a failure of op; a context error gets its gRPC code.
func newError(op, profile string, err error) *Error {
	var te *Error
	if errors.As(err, &te) {
		return te
	}
	code := status.Code(err)
	if code == codes.Unknown {
		if ce := status.FromContextError(err); ce.Code() != codes.Unknown {
			code = ce.Code()
		}
	}
	return &Error{Op: op, Profile: profile, Code: code, Err: err}
}
