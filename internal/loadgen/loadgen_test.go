package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCountsEveryOutcome(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "app.test", r.Host)
		if n.Add(1)%10 == 0 {
			http.Error(w, "boom", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, `{"version":"v1"}`)
	}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, Host: "app.test", Workers: 3, Rate: 300})
	time.Sleep(500 * time.Millisecond)
	res := run.Stop()
	require.Equal(t, n.Load(), res.Requests, "every request the server saw is counted")
	require.Equal(t, res.Requests, res.OK+res.Non2xx+res.Errors)
	require.Equal(t, res.Requests/10, res.Non2xx)
	require.Equal(t, res.OK, res.Versions["v1"])
	require.Equal(t, int64(3), res.Conns, "one kept-alive connection per worker")
	require.InDelta(t, 150, float64(res.Requests), 60, "the rate cap holds")
	require.ErrorIs(t, Check(res), ErrFailed)
	require.Contains(t, res.String(), "503 boom")
	require.Equal(t, res, run.Stop(), "Stop is idempotent")
}

func TestRefusedConnectionsAreErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	run := Start(context.Background(), Config{URL: "http://" + addr + "/", Workers: 2, Rate: 100})
	time.Sleep(200 * time.Millisecond)
	res := run.Stop()
	require.Positive(t, res.Errors)
	require.Equal(t, res.Requests, res.Errors)
	require.Contains(t, res.String(), "connection refused")
}

func TestCleanRunPassesCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, Workers: 2})
	time.Sleep(100 * time.Millisecond)
	res := run.Stop()
	require.Positive(t, res.OK)
	require.NoError(t, Check(res))
}

// A server that closes a kept-alive connection instead of answering its
// second request: net/http retries the GET on a new connection, as every
// HTTP client does, and the run counts it as retried, not failed.
func TestRetryOnClosedKeepAliveIsCounted(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				req.Body.Close()
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				_, _ = http.ReadRequest(br) // then close without an answer
			}()
		}
	}()
	run := Start(context.Background(), Config{URL: "http://" + l.Addr().String() + "/", Workers: 1, Rate: 50})
	time.Sleep(300 * time.Millisecond)
	res := run.Stop()
	require.Zero(t, res.Failed(), res.String())
	require.Positive(t, res.Retried)
	require.GreaterOrEqual(t, res.Retried, res.Requests-2, "all but the first request or so were retried")
}
