package hosts

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSpecValidate(t *testing.T) {
	t.Parallel()
	ok := []Spec{
		{Name: "h1", DockerURL: "unix:///var/run/docker.sock", Address: "127.0.1.2"},
		{Name: "h2", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: "/etc/berth/ca.pem", Cert: "/etc/berth/cert.pem", Key: "/etc/berth/key.pem"},
			Address: "10.0.0.2", Labels: map[string]string{"zone": "a", "disk": "ssd"}, CPU: 8, Memory: 16 << 30},
		{Name: "h3", DockerURL: "tcp://127.0.0.1:2375", Address: "127.0.0.1"},
	}
	for _, s := range ok {
		require.NoError(t, s.Validate(), s.Name)
	}
	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "H 1", DockerURL: "unix:///run/d.sock", Address: "127.0.0.1"}, "name:"},
		{Spec{Name: "h", Address: "127.0.0.1"}, "docker_url: must be set"},
		{Spec{Name: "h", DockerURL: "ssh://h", Address: "127.0.0.1"}, "the scheme must be unix or tcp"},
		{Spec{Name: "h", DockerURL: "unix://run/../etc/d.sock", Address: "127.0.0.1"}, "absolute, clean socket path"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock?x=1#y", Address: "127.0.0.1"}, "no user, query or fragment"},
		{Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2375", Address: "10.0.0.2"}, "tls: must be set for a tcp:// engine off loopback"},
		{Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376/x", TLS: &TLS{CA: "/a", Cert: "/b", Key: "/c"}, Address: "10.0.0.2"}, "tcp://host:port and nothing else"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock", TLS: &TLS{CA: "/a", Cert: "/b", Key: "/c"}, Address: "127.0.0.1"}, "tls: is for a tcp:// engine"},
		{Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: "ca.pem", Cert: "/b", Key: "/c;"}, Address: "10.0.0.2"}, "tls.ca:"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "0.0.0.0"}, "address:"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "fe80::1%eth0"}, "no zone"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "127.0.0.1", Labels: map[string]string{"zone": "a b"}}, "labels[zone]:"},
		{Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "127.0.0.1", CPU: -1}, "cpu: (-1) must be between 0"},
	}
	for _, tt := range tests {
		err := tt.spec.Validate()
		require.Error(t, err, tt.want)
		require.Contains(t, err.Error(), tt.want)
	}
	rec := ok[1].Record()
	back := FromRecord(rec)
	require.Equal(t, ok[1], back)
}
