package accesslog

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want Entry
		err  string
	}{
		{"syslog framed", `<190>Nov 24 00:45:21 berth: {"app":"web","status":200,"request_time":0.003,"upstream":"127.0.0.1:9000","upstream_status":"200","upstream_response_time":"0.002","upstream_connect_time":"0.000"}`,
			Entry{App: "web", Status: 200, UpstreamMS: 2, RequestSeconds: 0.003}, ""},
		{"retried upstream sums", `{"app":"web","status":200,"upstream":"a:1, b:2","upstream_response_time":"0.001, 0.003"}`,
			Entry{App: "web", Status: 200, UpstreamMS: 4, RequestSeconds: -1}, ""},
		{"no upstream (503 from nginx)", `{"app":"web","status":503,"request_time":0.000,"upstream":"","upstream_response_time":""}`,
			Entry{App: "web", Status: 503, UpstreamMS: -1}, ""},
		{"upstream error", `{"app":"web","status":502,"upstream":"127.0.0.1:1","upstream_response_time":"0.000"}`,
			Entry{App: "web", Status: 502, UpstreamMS: 0, UpstreamError: true, RequestSeconds: -1}, ""},
		{"refused connect", `{"app":"web","status":502,"request_time":0.001,"upstream":"127.0.0.1:1","upstream_status":"502","upstream_response_time":"0.000","upstream_connect_time":"-"}`,
			Entry{App: "web", Status: 502, UpstreamMS: 0, UpstreamError: true, RequestSeconds: 0.001, ConnectErrors: 1}, ""},
		{"refused then answered", `{"app":"web","status":200,"request_time":0.004,"upstream":"127.0.0.1:1, 127.0.0.1:2","upstream_status":"502, 200","upstream_response_time":"0.000, 0.003","upstream_connect_time":"-, 0.001"}`,
			Entry{App: "web", Status: 200, UpstreamMS: 3, RequestSeconds: 0.004, ConnectErrors: 1}, ""},
		{"connect timeout, then a redirect's group refused", `{"app":"web","status":502,"request_time":1.002,"upstream":"a:1, b:2 : c:3","upstream_status":"504, 200 : 502","upstream_response_time":"1.000, 0.001 : 0.000","upstream_connect_time":"-, 0.000 : -"}`,
			Entry{App: "web", Status: 502, UpstreamMS: 1001, UpstreamError: true, RequestSeconds: 1.002, ConnectErrors: 2}, ""},
		{"read timeout is no connect error", `{"app":"web","status":504,"request_time":5.0,"upstream":"a:1","upstream_status":"504","upstream_response_time":"5.000","upstream_connect_time":"0.001"}`,
			Entry{App: "web", Status: 504, UpstreamMS: 5000, UpstreamError: true, RequestSeconds: 5}, ""},
		{"bad response is no connect error", `{"app":"web","status":502,"request_time":0.002,"upstream":"a:1","upstream_status":"502","upstream_response_time":"0.002","upstream_connect_time":"0.001"}`,
			Entry{App: "web", Status: 502, UpstreamMS: 2, UpstreamError: true, RequestSeconds: 0.002}, ""},
		{"no live upstream", `{"app":"web","status":502,"request_time":0.000,"upstream":"berth_web","upstream_status":"502","upstream_response_time":"0.000","upstream_connect_time":"-"}`,
			Entry{App: "web", Status: 502, UpstreamMS: 0, UpstreamError: true, ConnectErrors: 1}, ""},
		{"unrouted", `{"app":"","status":404,"upstream":"","upstream_response_time":""}`, Entry{Status: 404, UpstreamMS: -1, RequestSeconds: -1}, ""},
		{"garbage", `<190>hello`, Entry{}, "no JSON object"},
		{"bad json", `{"app":`, Entry{}, "access log"},
		{"bad status", `{"app":"web","status":7}`, Entry{}, "status 7"},
		{"hostile app", `{"app":"web;evil","status":200}`, Entry{}, `app "web;evil"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Parse([]byte(tt.in))
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.InDelta(t, tt.want.UpstreamMS, got.UpstreamMS, 1e-9)
			require.InDelta(t, tt.want.RequestSeconds, got.RequestSeconds, 1e-9)
			got.UpstreamMS, got.RequestSeconds = tt.want.UpstreamMS, tt.want.RequestSeconds
			// The raw attempt lists are kept as logged (TestAttempts reads them).
			var l line
			require.NoError(t, json.Unmarshal([]byte(tt.in[strings.IndexByte(tt.in, '{'):]), &l))
			require.Equal(t, []string{l.Upstream, l.UpstreamStatus, l.UpstreamConnectTime}, []string{got.Upstreams, got.UpstreamStatuses, got.UpstreamConnects})
			got.Upstreams, got.UpstreamStatuses, got.UpstreamConnects = "", "", ""
			require.Equal(t, tt.want, got)
		})
	}
}

func TestAggregatorWindows(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	a := NewAggregator("lb-1", t0)
	for i := 1; i <= 100; i++ { // latencies 1..100 ms
		a.Add(Entry{App: "web", Status: 200, UpstreamMS: float64(i)})
	}
	a.Add(Entry{App: "web", Status: 503, UpstreamMS: -1})
	a.Add(Entry{App: "web", Status: 502, UpstreamMS: 0.5, UpstreamError: true})
	a.Add(Entry{App: "api", Status: 404, UpstreamMS: 3})
	a.Add(Entry{Status: 404, UpstreamMS: -1}) // unrouted: not counted

	out := a.Flush(t0.Add(2*time.Second), nil)
	require.Len(t, out, 2)
	api, web := out[0], out[1]
	require.Equal(t, "api", api.App)
	require.Equal(t, int64(1), api.Status.S4xx)
	require.Equal(t, "web", web.App)
	require.Equal(t, int64(102), web.Requests)
	require.InDelta(t, 51, web.RPS, 1e-9)
	require.Equal(t, msg.StatusCounts{S2xx: 100, S5xx: 2}, web.Status)
	require.Equal(t, int64(1), web.UpstreamErrors)
	require.InDelta(t, 50, web.P50MS, 2, "p50 within the sketch's 1%% accuracy")
	require.InDelta(t, 95, web.P95MS, 2)
	require.InDelta(t, 99, web.P99MS, 2)
	require.NoError(t, web.Validate(), "a flushed window is a valid v1 message")

	require.Empty(t, a.Flush(t0.Add(3*time.Second), nil), "a new window starts empty")

	// An app it routes gets a window of zero requests: "no traffic", not "no lbagent".
	a.Add(Entry{App: "api", Status: 200, UpstreamMS: 3})
	out = a.Flush(t0.Add(4*time.Second), []string{"web", "api"})
	require.Len(t, out, 2)
	require.Equal(t, int64(1), out[0].Requests)
	require.Equal(t, "web", out[1].App)
	require.Zero(t, out[1].Requests)
	require.Zero(t, out[1].RPS)
	require.Nil(t, out[1].LatencyHistogram, "no request, no latency")
	require.InDelta(t, 1, out[1].Window.Std().Seconds(), 1e-9)
	require.NoError(t, out[1].Validate())
}

func TestReceiverReadsDatagrams(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "access.sock")
	agg := NewAggregator("lb-1", time.Now())
	r := NewReceiver(path, agg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Ready()

	conn, err := net.Dial("unixgram", path)
	require.NoError(t, err)
	for i := range 5 {
		_, err := fmt.Fprintf(conn, `<190>Nov 24 00:45:21 berth: {"app":"web","status":200,"upstream":"x:1","upstream_response_time":"0.00%d"}`, i+1)
		require.NoError(t, err)
	}
	_, err = conn.Write([]byte("junk"))
	require.NoError(t, err)
	conn.Close()
	require.Eventually(t, func() bool { return r.Invalid() == 1 }, 5*time.Second, 5*time.Millisecond)
	out := agg.Flush(time.Now(), nil)
	require.Len(t, out, 1)
	require.Equal(t, int64(5), out[0].Requests)
	cancel()
	require.NoError(t, <-done)
}

func TestReceiverSocketIsGroupOnly(t *testing.T) {
	t.Parallel()
	gid := os.Getgid()
	for _, group := range []string{"", strconv.Itoa(gid)} {
		t.Run("group "+group, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "access.sock")
			r := NewReceiver(path, NewAggregator("lb-1", time.Now()))
			r.Group = group
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			<-r.Ready()
			fi, err := os.Stat(path)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o660), fi.Mode().Perm(), "not writable by other users")
			want, err := socketGroup(group, os.Geteuid(), user.Lookup, user.LookupGroup)
			require.NoError(t, err)
			if want < 0 {
				want = gid
			}
			require.Equal(t, uint32(want), fi.Sys().(*syscall.Stat_t).Gid)
			cancel()
			require.NoError(t, <-done)
		})
	}
}

func TestReceiverRefusesUnknownGroup(t *testing.T) {
	t.Parallel()
	r := NewReceiver(filepath.Join(t.TempDir(), "access.sock"), NewAggregator("lb-1", time.Now()))
	r.Group = "no-such-group-berth"
	require.ErrorContains(t, r.Run(context.Background()), "--access-log-group")
}

func TestSocketGroup(t *testing.T) {
	t.Parallel()
	users := map[string]string{"nobody": "65534", "www-data": "33"}
	lookupUser := func(name string) (*user.User, error) {
		if gid, ok := users[name]; ok {
			return &user.User{Username: name, Gid: gid}, nil
		}
		return nil, user.UnknownUserError(name)
	}
	withNginx := func(name string) (*user.User, error) {
		if name == "nginx" {
			return &user.User{Username: name, Gid: "101"}, nil
		}
		return lookupUser(name)
	}
	noUsers := func(name string) (*user.User, error) { return nil, user.UnknownUserError(name) }
	lookupGroup := func(name string) (*user.Group, error) {
		if name == "www-data" {
			return &user.Group{Name: name, Gid: "33"}, nil
		}
		return nil, user.UnknownGroupError(name)
	}
	for _, tc := range []struct {
		name       string
		group      string
		euid       int
		lookupUser func(string) (*user.User, error)
		want       int
		err        string
	}{
		{"named group", "www-data", 1000, lookupUser, 33, ""},
		{"numeric group", "4242", 1000, lookupUser, 4242, ""},
		{"unknown group", "nope", 0, lookupUser, 0, "--access-log-group"},
		{"not root: own group", "", 1000, withNginx, -1, ""},
		{"root: nginx first", "", 0, withNginx, 101, ""},
		{"root: else nobody", "", 0, lookupUser, 65534, ""},
		{"root: neither", "", 0, noUsers, -1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := socketGroup(tc.group, tc.euid, tc.lookupUser, lookupGroup)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestAttemptsPairsAddressesWithOutcomes(t *testing.T) {
	t.Parallel()
	type attempt struct {
		addr   string
		failed bool
	}
	tests := []struct {
		name                   string
		addrs, status, connect string
		want                   []attempt
	}{
		{name: "one answer", addrs: "10.0.0.1:80", status: "200", connect: "0.001", want: []attempt{{"10.0.0.1:80", false}}},
		{name: "a 500 fails", addrs: "10.0.0.1:80", status: "500", connect: "0.001", want: []attempt{{"10.0.0.1:80", true}}},
		{name: "refused then answered", addrs: "10.0.0.1:80, 10.0.0.2:80", status: "502, 200", connect: "-, 0.002",
			want: []attempt{{"10.0.0.1:80", true}, {"10.0.0.2:80", false}}},
		{name: "across an internal redirect", addrs: "10.0.0.1:80 : 10.0.0.3:80", status: "504 : 404", connect: "- : 0.001",
			want: []attempt{{"10.0.0.1:80", true}, {"10.0.0.3:80", false}}},
		{name: "no upstream", addrs: "-", status: "-", connect: "-", want: []attempt{{"-", false}}},
		{name: "empty", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := Entry{Upstreams: tt.addrs, UpstreamStatuses: tt.status, UpstreamConnects: tt.connect}
			var got []attempt
			e.Attempts(func(addr string, failed bool) { got = append(got, attempt{addr, failed}) })
			require.Equal(t, tt.want, got)
		})
	}
}
