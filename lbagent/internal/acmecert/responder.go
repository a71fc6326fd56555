package acmecert

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/lbagent/internal/atomicfile"
)

// Responder answers ACME HTTP-01 challenges from the challenges bucket:
// nginx sends /.well-known/acme-challenge/ of every app with tls.acme to
// it (render.Options.ACME), so the CA's request passes on whichever edge
// node it reaches, and no answer needs a reload. It answers a token only
// for the host the scheduler's order named.
type Responder struct {
	table             *view.Table[*msg.Challenge]
	answered, refused atomic.Uint64
}

// NewResponder returns a responder with no challenge.
func NewResponder() *Responder {
	return &Responder{table: view.NewTable(func(c *msg.Challenge) uint64 { return c.Term }, nil)}
}

// Handler feeds the responder from a watcher of the challenges bucket.
func (r *Responder) Handler() bus.Handler[*msg.Challenge] { return r.table.Handler() }

// Counts returns the challenges answered and the requests refused (no
// such token, or another host).
func (r *Responder) Counts() (answered, refused uint64) { return r.answered.Load(), r.refused.Load() }

// ServeHTTP answers GET and HEAD /.well-known/acme-challenge/<token>.
func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	token, ok := strings.CutPrefix(req.URL.Path, spec.ACMEChallengePath)
	if !ok || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		r.refused.Add(1)
		http.NotFound(w, req)
		return
	}
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	c, ok := r.table.Get(token)
	if !ok || !strings.EqualFold(c.Host, host) {
		r.refused.Add(1)
		http.NotFound(w, req)
		return
	}
	r.answered.Add(1)
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(c.KeyAuthorization))
}

// Listen listens on addr (host:port, loopback). Port 0 reuses the port
// this lbagent used before, remembered in portFile, when it is free, so
// that a restart renders the same config and reloads nothing.
func Listen(addr, portFile string) (net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--acme-listen %q: %w", addr, err)
	}
	if port == "0" && portFile != "" {
		if b, err := os.ReadFile(portFile); err == nil {
			if ln, err := net.Listen("tcp", net.JoinHostPort(host, strings.TrimSpace(string(b)))); err == nil {
				return ln, nil
			}
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--acme-listen: %w", err)
	}
	if port == "0" && portFile != "" {
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		if err := atomicfile.Write(portFile, []byte(p+"\n"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			_ = ln.Close()
			return nil, err
		}
	}
	return ln, nil
}
