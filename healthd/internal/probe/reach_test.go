package probe

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

func TestProbeReachesOnlyTheInstance(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int32
	other := serve(t, func(w http.ResponseWriter, _ *http.Request) { elsewhere.Add(1); fmt.Fprint(w, "ok") })
	var accepted atomic.Int32
	bystander := listener(t, func(c net.Conn) { accepted.Add(1); c.Close() })
	follow := func(h *spec.Health) { h.ExpectedStatus, _ = spec.ParseStatusRanges("200"); h.FollowRedirects = true }
	redirectTo := func(url string) string {
		return serve(t, func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, url, http.StatusFound) })
	}
	tests := []struct {
		name    string
		target  Target
		ok      bool
		failure string
		msg     string
	}{
		{"redirect to another port on the same address", Target{Address: redirectTo("http://" + other + "/"), Check: httpCheck(follow)},
			false, msg.FailureProtocol, "redirect to another host (" + other + ") not followed"},
		{"redirect to another address", Target{Address: redirectTo("http://169.254.169.254/latest/meta-data/"), Check: httpCheck(follow)},
			false, msg.FailureProtocol, "redirect to another host (169.254.169.254) not followed"},
		{"redirect loop on the same host", Target{Address: redirectTo("/healthz"), Check: httpCheck(follow)},
			false, msg.FailureProtocol, "stopped after 5 redirects"},
		{"refused target is never dialled", Target{Address: bystander, Refused: "health.port 4222 not probed", Check: spec.Health{Type: spec.HealthTCP, Send: "PUB x 0\r\n\r\n"}},
			false, msg.FailureProtocol, "health.port 4222 not probed"},
	}
	reg := New(offlineResolver(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			res := reg.Probe(ctx, tt.target)
			require.Equal(t, tt.ok, res.OK, "result %+v", res)
			require.Equal(t, tt.failure, res.Failure, "result %+v", res)
			require.Contains(t, res.Message, tt.msg)
		})
	}
	t.Cleanup(func() {
		require.Zero(t, elsewhere.Load(), "no probe reached another host")
		require.Zero(t, accepted.Load(), "a refused target is not dialled")
	})
}
