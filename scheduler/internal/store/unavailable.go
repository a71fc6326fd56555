package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable is in the chain of every store error caused by Postgres
// not answering: the connection was refused or timed out, it broke
// mid-query, the server is shutting down or starting up, or the pool could
// not hand out a connection before the caller's deadline. Callers detect
// it with errors.Is and tell the user to check Postgres and
// --database-url; retrying later may succeed.
var ErrUnavailable = errors.New("store: postgres unreachable")

// unreachable reports whether err, from pgx, means that Postgres could not
// be reached rather than that it refused the statement.
func unreachable(err error) bool {
	// The pool returns its context's error unwrapped when no connection
	// could be acquired in time; pgconn wraps the same error when a
	// statement itself is cut short, so identity tells the two apart.
	if err == context.DeadlineExceeded {
		return true
	}
	// Postgres answered: unreachable only if it said it is going away or
	// not up yet. A wrong password or database is a configuration error.
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"): // connection_exception
			return true
		case pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now
			return true
		}
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connectErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, pgconn.ErrConnClosed)
}
