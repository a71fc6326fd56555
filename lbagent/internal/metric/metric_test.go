package metric

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
)

// scrape returns the metrics text a Prometheus scrape of m gets.
func scrape(t *testing.T, m *Set) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func TestReloadsByResult(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		reload  msg.Reload
		want    []string
		notWant []string
	}{
		{
			name:   "applied sets duration and last success",
			reload: msg.Reload{Result: msg.ReloadApplied, DurationMS: 40, At: at},
			want: []string{`berth_lbagent_reloads_total{result="applied"} 1`, "berth_lbagent_reload_duration_seconds_sum 0.04",
				"berth_lbagent_last_success_timestamp_seconds 1.7954352e+09"},
		},
		{
			name:   "rejected counts its apps and still succeeded for the rest",
			reload: msg.Reload{Result: msg.ReloadRejected, DurationMS: 10, At: at, FailedApps: map[string]string{"web": "x", "api": "y"}},
			want: []string{`berth_lbagent_reloads_total{result="rejected"} 1`, `berth_lbagent_nginx_test_failures_total{app="web"} 1`,
				`berth_lbagent_nginx_test_failures_total{app="api"} 1`, "berth_lbagent_reload_duration_seconds_count 1"},
		},
		{
			name:    "failed is counted, not timed",
			reload:  msg.Reload{Result: msg.ReloadFailed, DurationMS: 10, At: at},
			want:    []string{`berth_lbagent_reloads_total{result="failed"} 1`, "berth_lbagent_reload_duration_seconds_count 0", "berth_lbagent_last_success_timestamp_seconds 0"},
			notWant: []string{"berth_lbagent_nginx_test_failures_total{"},
		},
		{
			name:   "skipped is counted, not timed",
			reload: msg.Reload{Result: msg.ReloadSkipped, At: at},
			want:   []string{`berth_lbagent_reloads_total{result="skipped"} 1`, "berth_lbagent_reload_duration_seconds_count 0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := New(Sources{})
			r := tt.reload
			m.Reload(&r)
			text := scrape(t, m)
			for _, w := range tt.want {
				require.Contains(t, text, w)
			}
			for _, w := range tt.notWant {
				require.NotContains(t, text, w)
			}
		})
	}
}

func TestGaugesAndSources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		act  func(m *Set)
		src  Sources
		want []string
	}{
		{
			name: "nil sources read zero",
			act:  func(*Set) {},
			want: []string{"berth_lbagent_applied_generation 0", "berth_lbagent_invalid_messages_total 0",
				"berth_lbagent_fenced_writes_total 0", "berth_lbagent_access_log_invalid_total 0", "berth_lbagent_snapshot_held 0"},
		},
		{
			name: "sources are read at scrape time",
			act:  func(*Set) {},
			src: Sources{Generation: func() uint64 { return 7 }, Dropped: func() uint64 { return 3 },
				Fenced: func() uint64 { return 2 }, AccessInvalid: func() uint64 { return 5 }},
			want: []string{"berth_lbagent_applied_generation 7", "berth_lbagent_invalid_messages_total 3",
				"berth_lbagent_fenced_writes_total 2", "berth_lbagent_access_log_invalid_total 5"},
		},
		{
			name: "applied, served, rendered, held",
			act: func(m *Set) {
				m.Applied(&msg.Agent{AppliedRevision: 99})
				m.Served(4, 11)
				m.Rendered(3 * time.Millisecond)
				m.Held(true)
			},
			want: []string{"berth_lbagent_applied_revision 99", "berth_lbagent_apps 4", "berth_lbagent_servers 11",
				"berth_lbagent_render_duration_seconds_count 1", "berth_lbagent_snapshot_held 1"},
		},
		{
			name: "a reload waited for beyond --confirm-timeout",
			act:  func(m *Set) { m.ConfirmWait(27 * time.Second); m.ReloadServed(9 * time.Second) },
			want: []string{"berth_lbagent_confirm_wait_seconds 27", "berth_lbagent_reload_served_seconds_count 1",
				"berth_lbagent_reload_served_seconds_sum 9"},
		},
		{
			name: "held then released",
			act:  func(m *Set) { m.Held(true); m.Held(false) },
			want: []string{"berth_lbagent_snapshot_held 0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := New(tt.src)
			tt.act(m)
			text := scrape(t, m)
			for _, w := range tt.want {
				require.Contains(t, text, w+"\n")
			}
			require.False(t, strings.Contains(text, "go_goroutines"), "its own registry: no process collectors")
		})
	}
}
