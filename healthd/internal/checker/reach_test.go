package checker

import (
	"net/netip"
	"testing"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/stretchr/testify/require"
)

// TestTargetsReachOnlyTheInstance: a hostile spec's health port is probed
// on the instance's container address or not at all, never on healthd's
// loopback or on the host of a published port.
func TestTargetsReachOnlyTheInstance(t *testing.T) {
	t.Parallel()
	hostile := &spec.Health{Type: spec.HealthTCP, Port: 4222, Send: "PUB $KV.berth_instances.web.a 2\r\n{}\r\n"}
	tests := []struct {
		name    string
		address string // the instance's, as the scheduler recorded it
		want    string // the probed address; empty when refused
	}{
		{"published on loopback", "127.0.0.1:32768", ""},
		{"published on loopback at the app port", "127.0.0.1:8080", ""},
		{"published on another loopback", "127.0.0.2:32768", ""},
		{"published on ipv6 loopback", "[::1]:8080", ""},
		{"v4-mapped loopback", "[::ffff:127.0.0.1]:8080", ""},
		{"published on a host address", "10.0.0.5:32768", ""},
		{"unspecified", "0.0.0.0:8080", ""},
		{"link-local", "169.254.169.254:8080", ""},
		{"link-local ipv6 with a zone", "[fe80::1%eth0]:8080", ""},
		{"a host name", "localhost:8080", ""},
		{"not an address", "garbage", ""},
		{"container address on a network", "172.18.0.5:8080", "172.18.0.5:4222"},
		{"ipv6 container address", "[fd00::5]:8080", "[fd00::5]:4222"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			apps := map[string]*msg.App{"web": {Name: "web", Port: 8080, Health: hostile}}
			instances := map[string]*msg.Instance{"web.a": {App: "web", ID: "a", State: msg.StateRunning, Address: tt.address}}
			got := Targets(apps, instances, nil)
			require.Len(t, got, 1, "a refused target is still listed, so its failure is reported")
			tg := got[0]
			if tt.want == "" {
				require.NotEmpty(t, tg.Refused, "the probe must not connect")
				require.Equal(t, tt.address, tg.Address, "a refused target names only the instance's own address")
				require.Contains(t, tg.Refused, "health.port 4222 not probed")
				return
			}
			require.Empty(t, tg.Refused)
			require.Equal(t, tt.want, tg.Address)
			ap := netip.MustParseAddrPort(tg.Address)
			require.False(t, ap.Addr().IsLoopback(), "never healthd's own loopback")
		})
	}
}

// TestTargetsSamePortIsTheAddress: a check on the app's port goes to the
// instance's address whatever it is, published or not.
func TestTargetsSamePortIsTheAddress(t *testing.T) {
	t.Parallel()
	for _, port := range []int{0, 8080} {
		apps := map[string]*msg.App{"web": {Name: "web", Port: 8080, Health: &spec.Health{Type: spec.HealthTCP, Port: port}}}
		instances := map[string]*msg.Instance{"web.a": {App: "web", ID: "a", State: msg.StateRunning, Address: "127.0.0.1:32768"}}
		got := Targets(apps, instances, nil)
		require.Len(t, got, 1)
		require.Equal(t, "127.0.0.1:32768", got[0].Address)
		require.Empty(t, got[0].Refused)
	}
}
