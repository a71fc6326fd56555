package console

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/api"
)

func TestOverviewRow(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ok := api.AppView{Name: "web", DesiredReplicas: 3, ObservedReplicas: 3,
		Rollout: &api.RolloutView{State: "complete"},
		Traffic: &api.TrafficView{RPS: 42.46, ErrorRate: 0.012, P95MS: 87.3},
		Summary: &api.SummaryView{ReadyReplicas: 3, Health: api.HealthTally{Healthy: 3},
			LastEvent: &api.LastEventView{Kind: msg.EventInstanceStarted, Message: strings.Repeat("é", 100), At: now.Add(-90 * time.Second)}}}
	row := overviewRow(ok, now)
	require.False(t, row.Trouble)
	require.Equal(t, "3 healthy", row.Health)
	require.Equal(t, "42.5", row.RPS)
	require.Equal(t, "1.2%", row.Errors)
	require.False(t, row.ErrorsHigh)
	require.Equal(t, "87 ms", row.P95)
	require.Equal(t, "1m30s", row.EventAgo)
	require.LessOrEqual(t, len(row.EventText), maxEventText+len("…"))
	require.True(t, strings.HasSuffix(row.EventText, "é…"), "cut on a character boundary")

	for name, change := range map[string]func(*api.AppView){
		"fewer ready":     func(a *api.AppView) { a.Summary.ReadyReplicas = 2 },
		"unhealthy":       func(a *api.AppView) { a.Summary.Health = api.HealthTally{Healthy: 2, Unhealthy: 1} },
		"breaker open":    func(a *api.AppView) { a.Breaker = &api.BreakerView{} },
		"rollout failed":  func(a *api.AppView) { a.Rollout = &api.RolloutView{State: api.RolloutFailed} },
		"rolled back":     func(a *api.AppView) { a.Rollout = &api.RolloutView{State: api.RolloutRolledBack} },
		"summary missing": func(a *api.AppView) { a.Summary = nil },
	} {
		a := ok
		s := *ok.Summary
		a.Summary = &s
		change(&a)
		require.True(t, overviewRow(a, now).Trouble, name)
	}
	high := ok
	high.Traffic = &api.TrafficView{ErrorRate: 0.05}
	require.True(t, overviewRow(high, now).ErrorsHigh)
	require.Empty(t, overviewRow(high, now).P95, "no p95 when no request reached an instance")
}
