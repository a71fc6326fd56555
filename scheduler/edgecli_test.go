package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TestEdgeCommand: scheduler edge prints every lbagent as a table row,
// with its lag, mode and latest reload and push, then each one's errors,
// as single lines (a newline in an lbagent's error moves no column); -o
// json prints the API's answer.
func TestEdgeCommand(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	records := []*msg.Agent{
		{Node: "lb-1", AppliedRevision: 120, Apps: map[string]int64{"web": 3, "api": 1}, Errors: map[string]string{"api": "nginx -t:\nrefused"},
			NginxVersion: "nginx/1.22.1", Mode: msg.ModeDynamic, LastError: "control endpoint: 500",
			LastReload: &msg.ConfigChange{At: now.Add(-time.Hour), DurationMS: 84.5, Revision: 100},
			LastPush:   &msg.ConfigChange{At: now.Add(-2 * time.Second), DurationMS: 1.5, Revision: 120, Error: "control endpoint: 500"}, UpdatedAt: now},
		{Node: "lb-2", AppliedRevision: 90, Apps: map[string]int64{"web": 3}, UpdatedAt: now.Add(-time.Minute)},
	}
	srv := httptest.NewServer(api.New(api.Deps{}, api.Options{Open: true, Agents: func() []*msg.Agent { return records },
		InstancesRevision: func(context.Context) (uint64, error) { return 120, nil }}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)

	code, out, errOut := cmd(t, "edge", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "instances bucket at revision 120\n")
	require.Regexp(t, `(?m)^NODE\s+MODE\s+APPLIED\s+LAG\s+LAST RELOAD\s+LAST PUSH\s+NGINX\s+APPS\s+APP ERRORS\s+REPORTED$`, out)
	require.Regexp(t, `(?m)^lb-1\s+dynamic\s+120\s+0 \(caught up\)\s+1h0m\ds ago, 84ms, ok\s+\ds ago, 1\.5ms, FAILED\s+nginx/1\.22\.1\s+2\s+1\s+\ds ago$`, out)
	require.Regexp(t, `(?m)^lb-2\s+unknown\s+90\s+30 behind\s+-\s+-\s+-\s+1\s+0\s+1m\ds ago \(stale\)$`, out)
	require.Contains(t, out, "lb-1: failing: control endpoint: 500\n")
	require.Regexp(t, `(?m)^lb-1: last push failed \ds ago: control endpoint: 500$`, out)
	require.Contains(t, out, "lb-1: app api keeps its last good config: nginx -t: refused\n")

	code, out, errOut = cmd(t, "edge", "-o", "json", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	var v api.EdgeView
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	require.Len(t, v.Agents, 2)
	require.Equal(t, "unknown", v.Agents[1].Mode)
}

// TestEdgeOnEveryReplica: a leader and a follower answer scheduler edge
// alike, from their own watch of the agents bucket and the instances
// bucket's revision on NATS: an lbagent older than mode shows as unknown,
// with its lag; scheduler certs answers through the store.
func TestEdgeOnEveryReplica(t *testing.T) {
	t.Parallel()
	db, natsURL := testrig.Postgres(t), testrig.NATS(t)
	code, _, errOut := cmd(t, "migrate", "--database-url", db)
	require.Equal(t, 0, code, errOut)
	a := startReplica(t, db, natsURL, "sched-a")
	b := startReplica(t, db, natsURL, "sched-b")

	conn, err := bus.Connect(context.Background(), bus.Options{URL: natsURL}, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(conn.Close)
	names, _ := msg.NewNames("berth")
	require.NoError(t, conn.EnsureBuckets(context.Background(), bus.ContractBuckets(names)))
	insts, err := conn.KV(context.Background(), names.InstancesBucket())
	require.NoError(t, err)
	// A stray key: the leader's guard may delete it, a revision too.
	rev, err := insts.Put(context.Background(), "web.a1", []byte(`{}`))
	require.NoError(t, err)
	agents, err := conn.KV(context.Background(), names.AgentsBucket())
	require.NoError(t, err)
	old := `{"type":"berth.agent.v1","node":"lb-old","applied_revision":` + strconv.FormatUint(rev-1, 10) +
		`,"apps":{"web":1},"updated_at":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}`
	_, err = agents.Put(context.Background(), "lb-old", []byte(old))
	require.NoError(t, err)

	for _, r := range []*replica{a, b} {
		var v api.EdgeView
		require.Eventually(t, func() bool {
			code, out, _ := cmd(t, "edge", "-o", "json", "--server", r.api)
			v = api.EdgeView{}
			return code == 0 && json.Unmarshal([]byte(out), &v) == nil && len(v.Agents) == 1
		}, 10*time.Second, 20*time.Millisecond, "the replica at %s shows the lbagent", r.api)
		require.Empty(t, v.RevisionError)
		require.GreaterOrEqual(t, v.InstancesRevision, rev)
		got := v.Agents[0]
		require.Equal(t, "lb-old", got.Node)
		require.Equal(t, api.ModeUnknown, got.Mode)
		require.Nil(t, got.LastReload)
		require.NotNil(t, got.Lag)
		require.Equal(t, v.InstancesRevision-(rev-1), *got.Lag)
		require.False(t, got.Stale)

		code, out, errOut := cmd(t, "certs", "--server", r.api)
		require.Equal(t, 0, code, errOut)
		require.Equal(t, "no certificate: no app has routing.tls.acme\n", out)
	}
}

// fakeCertStore serves the apps and certificates GET /v1/certificates
// reads.
type fakeCertStore struct {
	api.AppReader
	apps  []store.App
	certs []store.CertificateInfo
}

func (f fakeCertStore) List(context.Context) ([]store.App, error) { return f.apps, nil }

func (f fakeCertStore) CertificateInfos(context.Context) ([]store.CertificateInfo, error) {
	return f.certs, nil
}

// TestCertsCommand: scheduler certs prints every certificate as a table
// row (a pending app's too) and each failed order below; without one it
// says so.
func TestCertsCommand(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	notAfter := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	f := fakeCertStore{
		apps: []store.App{{Name: "fresh", Spec: &spec.App{Name: "fresh", Routing: spec.Routing{Hosts: []string{"fresh.example.com"}, TLS: &spec.TLS{ACME: true}}}}},
		certs: []store.CertificateInfo{
			{App: "web", Names: []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}, Chain: "-----BEGIN CERTIFICATE-----\n",
				Serial: "3f", NotBefore: now.Add(-24 * time.Hour), NotAfter: notAfter, IssuedAt: now.Add(-24 * time.Hour),
				Failures: 2, RetryAt: now.Add(time.Hour), LastError: "acme: challenge\nfailed"},
		},
	}
	srv := httptest.NewServer(api.New(api.Deps{Apps: f, Certificates: f}, api.Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(srv.Close)

	code, out, errOut := cmd(t, "certs", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^APP\s+STATUS\s+NAMES\s+ISSUER\s+EXPIRES\s+DAYS LEFT\s+ISSUED\s+FAILURES$`, out)
	require.Regexp(t, `(?m)^fresh\s+pending\s+fresh\.example\.com\s+-\s+-\s+-\s+-\s+0$`, out)
	require.Regexp(t, `(?m)^web\s+valid\s+a\.example\.com,b\.example\.com,c\.example\.com \+1 more\s+-\s+2027-03-01 12:00\s+\d+\s+`+now.Add(-24*time.Hour).Format("2006-01-02 15:04")+`\s+2$`, out)
	require.Regexp(t, `(?m)^web: last order failed \(next try in (1h0m0s|59m5\ds)\): acme: challenge failed$`, out)

	code, out, errOut = cmd(t, "certs", "-o", "json", "--server", srv.URL)
	require.Equal(t, 0, code, errOut)
	var vs []api.CertificateView
	require.NoError(t, json.Unmarshal([]byte(out), &vs))
	require.Len(t, vs, 2)
	require.NotContains(t, out, "key")

	empty := httptest.NewServer(api.New(api.Deps{Apps: fakeCertStore{}, Certificates: fakeCertStore{}}, api.Options{Open: true}, zaptest.NewLogger(t)))
	t.Cleanup(empty.Close)
	code, out, errOut = cmd(t, "certs", "--server", empty.URL)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "no certificate: no app has routing.tls.acme\n", out)
}
