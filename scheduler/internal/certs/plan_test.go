package certs

import (
	"fmt"
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
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	got = Wants([]store.App{{Name: "web", Spec: acme, Generation: 4, UpdatedAt: at}})
	require.Equal(t, []Want{{App: "web", Names: []string{"a.example.com", "b.example.com"}, Generation: 4, Since: at}}, got, "since the spec as it is")
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
			p := MakePlan([]Want{{App: "web", Names: names}}, tt.have, now, DefaultRenewBefore, Budget{})
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
	p := MakePlan([]Want{{App: "web", Names: names}}, map[string]store.Certificate{"web": short}, now, DefaultRenewBefore, Budget{})
	require.Empty(t, p.Orders)
	require.Equal(t, now.Add(-time.Minute+16*time.Hour), p.Next)
	// Hosts changed right after an issuance: the order waits NamesWait.
	fresh := store.Certificate{Names: []string{"old.example.com"}, Chain: "pem", NotAfter: now.Add(80 * 24 * time.Hour), IssuedAt: now.Add(-20 * time.Second)}
	p = MakePlan([]Want{{App: "web", Names: names}}, map[string]store.Certificate{"web": fresh}, now, DefaultRenewBefore, Budget{})
	require.Empty(t, p.Orders)
	require.Equal(t, now.Add(NamesWait-20*time.Second), p.Next)

	p = MakePlan(nil, map[string]store.Certificate{"gone": valid(now), "also": {}}, now, DefaultRenewBefore, Budget{})
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

// TestMakePlanGlobalRate: at most Budget.Limit orders start in any hour
// across every app; certificates in service go first, the soonest to
// expire first, then new ones by how long their app has waited; every
// held order says when its slot opens.
func TestMakePlanGlobalRate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	minute := func(m int) time.Time { return now.Add(time.Duration(m) * time.Minute) }
	served := func(names string, expires time.Time) store.Certificate {
		return store.Certificate{Names: []string{names}, Chain: "pem", NotAfter: expires, IssuedAt: expires.Add(-90 * 24 * time.Hour)}
	}
	newApp := func(app string, since time.Time) Want {
		return Want{App: app, Names: []string{app + ".example.com"}, Since: since}
	}
	tests := []struct {
		name   string
		wants  []Want
		have   map[string]store.Certificate
		budget Budget
		orders []string
		held   []string
		at     []time.Time // of each held
		next   time.Time
	}{
		{name: "no limit", wants: []Want{newApp("a", minute(-5)), newApp("b", minute(-9))}, budget: Budget{Recent: []time.Time{minute(-1), minute(-2)}},
			orders: []string{"b", "a"}},
		{name: "under the limit", wants: []Want{newApp("a", minute(-5)), newApp("b", minute(-9))}, budget: Budget{Limit: 3, Recent: []time.Time{minute(-30)}},
			orders: []string{"b", "a"}},
		{name: "one slot left", wants: []Want{newApp("a", minute(-5)), newApp("b", minute(-9))}, budget: Budget{Limit: 2, Recent: []time.Time{minute(-30)}},
			orders: []string{"b"}, held: []string{"a"}, at: []time.Time{minute(30)}, next: minute(30)},
		{name: "at the limit: each held order takes the next slot to open", wants: []Want{newApp("a", minute(-5)), newApp("b", minute(-9)), newApp("c", minute(-1))},
			budget: Budget{Limit: 2, Recent: []time.Time{minute(-10), minute(-50)}},
			held:   []string{"b", "a", "c"}, at: []time.Time{minute(10), minute(50), minute(70)}, next: minute(10)},
		{name: "orders an hour old no longer count", wants: []Want{newApp("a", minute(-5))}, budget: Budget{Limit: 1, Recent: []time.Time{minute(-60), minute(-61)}},
			orders: []string{"a"}},
		{name: "a lowered limit waits for the older orders to age out", wants: []Want{newApp("a", minute(-5))},
			budget: Budget{Limit: 1, Recent: []time.Time{minute(-50), minute(-40), minute(-30)}},
			held:   []string{"a"}, at: []time.Time{minute(30)}, next: minute(30)},
		{name: "expired, then renewals by expiry, then new", wants: []Want{newApp("a", minute(-500)), newApp("late", minute(-400)), newApp("soon", minute(-300)), newApp("gone", minute(-200))},
			have: map[string]store.Certificate{
				"late": served("late.example.com", now.Add(20*24*time.Hour)), "soon": served("soon.example.com", now.Add(2*24*time.Hour)),
				"gone": served("gone.example.com", now.Add(-time.Hour))},
			budget: Budget{Limit: 1},
			orders: []string{"gone"}, held: []string{"soon", "late", "a"}, at: []time.Time{minute(60), minute(120), minute(180)}, next: minute(60)},
		{name: "a flood of new apps does not hold a renewal back past the next slot", budget: Budget{Limit: 30, Recent: flood(now, 30)},
			wants: append(floodWants(now, 50), newApp("zz-bank", minute(-1))),
			have:  map[string]store.Certificate{"zz-bank": served("zz-bank.example.com", now.Add(10*24*time.Hour))},
			held:  append([]string{"zz-bank"}, floodApps(50)...), next: minute(1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := MakePlan(tt.wants, tt.have, now, DefaultRenewBefore, tt.budget)
			var orders, held []string
			var at []time.Time
			for _, o := range p.Orders {
				orders = append(orders, o.App)
			}
			for _, h := range p.Held {
				held = append(held, h.App)
				at = append(at, h.At)
			}
			require.Equal(t, tt.orders, orders)
			require.Equal(t, tt.held, held)
			if tt.at != nil {
				require.Equal(t, tt.at, at)
			}
			require.Equal(t, tt.next, p.Next)
		})
	}
}

// flood is n orders started in the last hour, the oldest 59 minutes ago.
func flood(now time.Time, n int) []time.Time {
	out := make([]time.Time, n)
	for i := range out {
		out[i] = now.Add(-59*time.Minute + time.Duration(i)*time.Second)
	}
	return out
}

func floodApps(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("evil-%02d", i)
	}
	return out
}

// floodWants are n new apps, applied before the renewal falls due.
func floodWants(now time.Time, n int) []Want {
	out := make([]Want, n)
	for i, app := range floodApps(n) {
		out[i] = Want{App: app, Names: []string{app + ".example.com"}, Since: now.Add(-2*time.Hour + time.Duration(i)*time.Second)}
	}
	return out
}

func TestBudgetInWindow(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	b := Budget{Limit: 5, Recent: []time.Time{now.Add(-61 * time.Minute), now.Add(-time.Hour), now.Add(-59 * time.Minute), now}}
	require.Equal(t, 2, b.InWindow(now))
}
