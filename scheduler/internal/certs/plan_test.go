package certs

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

func TestWants(t *testing.T) {
	t.Parallel()
	acme := &spec.App{Name: "web", Routing: spec.Routing{Hosts: []string{"B.example.com", "a.example.com"}, TLS: &spec.TLS{ACME: true}}}
	files := &spec.App{Name: "api", Routing: spec.Routing{Hosts: []string{"api.example.com"}, TLS: &spec.TLS{Certificate: "/c", Key: "/k"}}}
	plain := &spec.App{Name: "old"}
	got := Wants([]store.App{{Name: "web", Spec: acme}, {Name: "api", Spec: files}, {Name: "old", Spec: plain}})
	require.Equal(t, []Want{{App: "web", Names: []string{"a.example.com", "b.example.com"}}}, got)

	// An app with tls.acme orders only for the hosts it owns: not for
	// a.example.com, which owner claimed first, whether it shares it or not.
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	owner := store.App{Name: "owner", CreatedAt: t0.Add(time.Hour), HostClaims: map[string]time.Time{"a.example.com": t0},
		Spec: &spec.App{Name: "owner", Routing: spec.Routing{Hosts: []string{"a.example.com"}}}}
	late := store.App{Name: "web", Spec: acme, CreatedAt: t0, HostClaims: map[string]time.Time{"a.example.com": t0.Add(time.Minute), "b.example.com": t0.Add(time.Minute)}}
	require.Equal(t, []Want{{App: "web", Names: []string{"b.example.com"}}}, Wants([]store.App{owner, late}))
	owner.Spec.Routing.Hosts = []string{"a.example.com", "b.example.com"}
	owner.HostClaims["b.example.com"] = t0
	require.Empty(t, Wants([]store.App{owner, late}), "an app that owns none of its hosts orders nothing")
}

func TestMakePlan(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	names := []string{"a.example.com"}
	valid := func(notAfter time.Time) store.Certificate {
		return store.Certificate{Names: names, Chain: "pem", NotAfter: notAfter}
	}
	tests := []struct {
		name   string
		have   map[string]store.Certificate
		reason string
		next   time.Time
	}{
		{"none", nil, ReasonNew, time.Time{}},
		{"never issued, failed, waiting", map[string]store.Certificate{"web": {Names: names, Failures: 2, RetryAt: now.Add(5 * time.Minute)}}, "", now.Add(5 * time.Minute)},
		{"never issued, retry due", map[string]store.Certificate{"web": {Names: names, Failures: 2, RetryAt: now}}, ReasonNew, time.Time{}},
		{"valid", map[string]store.Certificate{"web": valid(now.Add(60 * 24 * time.Hour))}, "", now.Add(30 * 24 * time.Hour)},
		{"within 30 days", map[string]store.Certificate{"web": valid(now.Add(29 * 24 * time.Hour))}, ReasonRenewal, time.Time{}},
		{"expired", map[string]store.Certificate{"web": valid(now.Add(-time.Hour))}, ReasonExpired, time.Time{}},
		{"hosts changed", map[string]store.Certificate{"web": {Names: []string{"old.example.com"}, Chain: "pem", NotAfter: now.Add(80 * 24 * time.Hour)}}, ReasonNames, time.Time{}},
		{"renewal failing: backoff holds even then", map[string]store.Certificate{"web": {Names: names, Chain: "pem", NotAfter: now.Add(20 * 24 * time.Hour), Failures: 1, RetryAt: now.Add(time.Minute)}}, "", now.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := MakePlan([]Want{{App: "web", Names: names}}, tt.have, now, DefaultRenewBefore)
			if tt.reason == "" {
				require.Empty(t, p.Orders)
			} else {
				require.Len(t, p.Orders, 1)
				require.Equal(t, tt.reason, p.Orders[0].Reason)
				require.Equal(t, names, p.Orders[0].Names)
			}
			require.Equal(t, tt.next, p.Next)
			require.Empty(t, p.Forget)
		})
	}
	// A day-long certificate (a private CA) is renewed at two thirds of
	// its life, not the moment it is issued.
	short := store.Certificate{Names: names, Chain: "pem", NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24*time.Hour - time.Minute)}
	p := MakePlan([]Want{{App: "web", Names: names}}, map[string]store.Certificate{"web": short}, now, DefaultRenewBefore)
	require.Empty(t, p.Orders)
	require.Equal(t, now.Add(-time.Minute+16*time.Hour), p.Next)
	// Hosts changed right after an issuance: the order waits NamesWait.
	fresh := store.Certificate{Names: []string{"old.example.com"}, Chain: "pem", NotAfter: now.Add(80 * 24 * time.Hour), IssuedAt: now.Add(-20 * time.Second)}
	p = MakePlan([]Want{{App: "web", Names: names}}, map[string]store.Certificate{"web": fresh}, now, DefaultRenewBefore)
	require.Empty(t, p.Orders)
	require.Equal(t, now.Add(NamesWait-20*time.Second), p.Next)

	p = MakePlan(nil, map[string]store.Certificate{"gone": valid(now), "also": {}}, now, DefaultRenewBefore)
	require.Equal(t, []string{"also", "gone"}, p.Forget)
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, Backoff(n, 0))
	}
	require.Equal(t, []time.Duration{2 * time.Minute, 6 * time.Minute, 18 * time.Minute, 54 * time.Minute, 162 * time.Minute,
		486 * time.Minute, 24 * time.Hour}, got)
	require.Equal(t, 24*time.Hour, Backoff(100, 0))
	require.Equal(t, 24*time.Hour+72*time.Minute, Backoff(100, 0.5), "jitter adds up to a tenth")
	// The attempts of a failing order in its first hour: at 0, 2, 8 and
	// 26 minutes, the fifth at 80: four failed validations an hour, under
	// Let's Encrypt's limit of five per name.
	at, attempts := time.Duration(0), 1
	for n := 1; at+Backoff(n, 0) < time.Hour; n++ {
		at += Backoff(n, 0)
		attempts++
	}
	require.Equal(t, 4, attempts)
}
