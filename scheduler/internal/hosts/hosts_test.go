package hosts

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// tlsDir is the --host-tls-dir of the validation tests (not read).
const tlsDir = "/etc/berth/hosts"

func TestSpecValidate(t *testing.T) {
	t.Parallel()
	strict := Policy{TLSDir: tlsDir}
	loop := Policy{TLSDir: tlsDir, AllowLoopback: true}
	ok := []struct {
		p    Policy
		spec Spec
	}{
		{strict, Spec{Name: "h1", DockerURL: "unix:///var/run/docker.sock", Address: "10.0.1.2"}},
		{strict, Spec{Name: "h2", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: tlsDir + "/ca.pem", Cert: tlsDir + "/h2/cert.pem", Key: tlsDir + "/h2/key.pem"},
			Address: "10.0.0.2", Labels: map[string]string{"zone": "a", "disk": "ssd"}, CPU: 8, Memory: 16 << 30,
			Registries: []string{"registry.corp.example", "docker.io", "10.0.0.5:5000", "[fd00::5]:5000", "ghcr.io"}}},
		{strict, Spec{Name: "h4", DockerURL: "tcp://docker.h4.corp.example:2376", TLS: &TLS{CA: tlsDir + "/ca.pem", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}, Address: "2001:db8::4"}},
		{loop, Spec{Name: "h3", DockerURL: "tcp://127.0.0.1:2375", Address: "127.0.0.1"}},
		{loop, Spec{Name: "h5", DockerURL: "unix:///run/h5/docker.sock", Address: "127.0.10.5"}},
	}
	for _, tt := range ok {
		require.NoError(t, tt.spec.Validate(tt.p), tt.spec.Name)
	}
	tlsFiles := &TLS{CA: tlsDir + "/ca.pem", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}
	tests := []struct {
		name string
		p    Policy
		spec Spec
		want string
	}{
		{"name", strict, Spec{Name: "H 1", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1"}, "name:"},
		{"no url", strict, Spec{Name: "h", Address: "10.0.0.1"}, "docker_url: must be set"},
		{"scheme", strict, Spec{Name: "h", DockerURL: "ssh://h", Address: "10.0.0.1"}, "the scheme must be unix or tcp"},
		{"unclean socket", strict, Spec{Name: "h", DockerURL: "unix://run/../etc/d.sock", Address: "10.0.0.1"}, "absolute, clean socket path"},
		{"query", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock?x=1#y", Address: "10.0.0.1"}, "no user, query or fragment"},
		{"tcp without tls", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2375", Address: "10.0.0.2"}, "tls: must be set for a tcp:// engine off loopback"},
		{"tcp path", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376/x", TLS: tlsFiles, Address: "10.0.0.2"}, "tcp://host:port and nothing else"},
		{"wildcard url host", strict, Spec{Name: "h", DockerURL: "tcp://*.corp.example:2376", TLS: tlsFiles, Address: "10.0.0.2"}, "neither a host name nor an IP"},
		{"unix with tls", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", TLS: tlsFiles, Address: "10.0.0.1"}, "tls: is for a tcp:// engine"},
		{"relative tls file", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: "ca.pem", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}, Address: "10.0.0.2"}, "tls.ca:"},
		{"odd tls file", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: tlsDir + "/ca.pem", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k;"}, Address: "10.0.0.2"}, "tls.key:"},
		{"labels", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Labels: map[string]string{"zone": "a b"}}, "labels[zone]:"},
		{"cpu", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", CPU: -1}, "cpu: (-1) must be between 0"},

		// TLS files lie under --host-tls-dir, which must be set.
		{"tls without a dir", Policy{}, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: tlsFiles, Address: "10.0.0.2"}, "tls: TLS files are refused: this scheduler has no --host-tls-dir"},
		{"another service's key", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: tlsDir + "/ca.pem", Cert: tlsDir + "/c.pem", Key: "/etc/berth/cert.key"}, Address: "10.0.0.2"},
			`tls.key: "/etc/berth/cert.key" is not under --host-tls-dir /etc/berth/hosts`},
		{"the dir's sibling", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: "/etc/berth/hosts-other/ca.pem", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}, Address: "10.0.0.2"},
			"tls.ca: \"/etc/berth/hosts-other/ca.pem\" is not under --host-tls-dir"},
		{"the dir itself", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: tlsDir, Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}, Address: "10.0.0.2"},
			"tls.ca: \"/etc/berth/hosts\" is not under --host-tls-dir"},
		{"dotdot", strict, Spec{Name: "h", DockerURL: "tcp://10.0.0.2:2376", TLS: &TLS{CA: tlsDir + "/../cert.key", Cert: tlsDir + "/c.pem", Key: tlsDir + "/k.pem"}, Address: "10.0.0.2"},
			"tls.ca: \"/etc/berth/hosts/../cert.key\" is not a valid file path"},

		// The address: never loopback (without the flag), link-local,
		// unspecified, multicast or a metadata endpoint.
		{"loopback address", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "127.0.0.1"}, `address: "127.0.0.1" is loopback`},
		{"loopback v6", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "::1"}, `address: "::1" is loopback`},
		{"loopback v4-mapped", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "::ffff:127.0.0.2"}, "is loopback"},
		{"metadata", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "169.254.169.254"}, `address: "169.254.169.254" is link-local`},
		{"metadata v4-mapped", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "::ffff:169.254.169.254"}, "is link-local"},
		{"metadata nat64", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "64:ff9b::a9fe:a9fe"}, "is link-local"},
		{"link-local v6", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "fe80::1"}, "is link-local"},
		{"zone", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "fe80::1%eth0"}, "has a zone"},
		{"unspecified", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "0.0.0.0"}, "is unspecified"},
		{"this network", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "0.1.2.3"}, "is unspecified"},
		{"unspecified v6", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "::"}, "is unspecified"},
		{"multicast", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "239.1.2.3"}, "is multicast"},
		{"multicast v6", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "ff02::1"}, "is multicast"},
		{"broadcast", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "255.255.255.255"}, "is multicast or broadcast"},
		{"aws metadata v6", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "fd00:ec2::254"}, "is a cloud metadata endpoint"},
		{"azure wireserver", loop, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "168.63.129.16"}, "is a cloud metadata endpoint"},
		{"host name", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "h.corp.example"}, "must be the IP address"},

		// The engine's URL, when its host is an IP, by the same rule.
		{"url at metadata", loop, Spec{Name: "h", DockerURL: "tcp://169.254.169.254:80", TLS: tlsFiles, Address: "10.0.0.2"}, `docker_url: "tcp://169.254.169.254:80": its host 169.254.169.254 is link-local`},
		{"url at link-local v6", loop, Spec{Name: "h", DockerURL: "tcp://[fe80::1]:2376", TLS: tlsFiles, Address: "10.0.0.2"}, "docker_url: \"tcp://[fe80::1]:2376\": its host fe80::1 is link-local"},
		{"url unspecified", loop, Spec{Name: "h", DockerURL: "tcp://0.0.0.0:2375", Address: "10.0.0.2"}, "its host 0.0.0.0 is unspecified"},
		{"url loopback", strict, Spec{Name: "h", DockerURL: "tcp://127.0.0.1:2375", Address: "10.0.0.2"}, "its host 127.0.0.1 is loopback"},

		// Registries a host may receive credentials for.
		{"registry url", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"https://registry.corp.example"}}, "registries[0]:"},
		{"registry hub alias", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"index.docker.io"}}, "registries[0]: \"index.docker.io\" is Docker Hub: write docker.io"},
		{"registry case", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"ghcr.io", "GHCR.io"}}, "registries[1]: \"GHCR.io\": write the registry in lowercase"},
		{"registry twice", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"ghcr.io", "ghcr.io"}}, "registries[1]: \"ghcr.io\" is named twice"},
		{"registry port", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"r.example:0"}}, "registries[0]:"},
		{"registry wildcard", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"*.corp.example"}}, "registries[0]:"},
		{"registry path", strict, Spec{Name: "h", DockerURL: "unix:///run/d.sock", Address: "10.0.0.1", Registries: []string{"ghcr.io/acme"}}, "registries[0]:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.spec.Validate(tt.p)
			require.ErrorContains(t, err, tt.want)
		})
	}
	rec := ok[1].spec.Record()
	back := FromRecord(rec)
	require.Equal(t, ok[1].spec, back)
}

func TestCheckIPAllowsUnicast(t *testing.T) {
	t.Parallel()
	for _, a := range []string{"10.0.0.2", "192.168.1.9", "172.18.0.4", "203.0.113.7", "2001:db8::4", "fd00:b::7", "100.64.0.1"} {
		require.NoError(t, Policy{}.CheckIP(netip.MustParseAddr(a)), a)
	}
	require.NoError(t, Policy{AllowLoopback: true}.CheckIP(netip.MustParseAddr("127.0.10.3")))
	require.ErrorContains(t, Policy{AllowLoopback: true}.CheckIP(netip.MustParseAddr("169.254.169.254")), "link-local", "the flag allows loopback only")
}

// TestResolveConfines resolves TLS files on a real file system: a file in
// the directory (or reached by a link that stays inside) is its path
// without links; a link pointing out, a link to a directory out, a
// directory and a missing file are refused, each naming the field and the
// directory.
func TestResolveConfines(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "hosts")
	outside := filepath.Join(root, "secrets")
	for _, d := range []string{filepath.Join(dir, "h1"), outside} {
		require.NoError(t, os.MkdirAll(d, 0o700))
	}
	write := func(path string) {
		require.NoError(t, os.WriteFile(path, []byte("pem"), 0o600))
	}
	write(filepath.Join(dir, "ca.pem"))
	write(filepath.Join(dir, "h1", "key.pem"))
	write(filepath.Join(outside, "service.key"))
	require.NoError(t, os.Symlink(filepath.Join(outside, "service.key"), filepath.Join(dir, "h1", "stolen.pem")))
	require.NoError(t, os.Symlink("../../secrets/service.key", filepath.Join(dir, "h1", "relative.pem")))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "secrets")))
	require.NoError(t, os.Symlink("key.pem", filepath.Join(dir, "h1", "current.pem")))
	// The directory named through a link resolves the same.
	linkDir := filepath.Join(root, "hosts-link")
	require.NoError(t, os.Symlink(dir, linkDir))

	p := Policy{TLSDir: dir}
	real, err := p.Resolve("tls.key", filepath.Join(dir, "h1", "key.pem"))
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "h1", "key.pem"), real)
	real, err = p.Resolve("tls.key", filepath.Join(dir, "h1", "current.pem"))
	require.NoError(t, err, "a link that stays inside")
	require.Equal(t, filepath.Join(dir, "h1", "key.pem"), real)
	real, err = Policy{TLSDir: linkDir}.Resolve("tls.ca", filepath.Join(linkDir, "ca.pem"))
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "ca.pem"), real)

	for _, tt := range []struct {
		name, path, want string
	}{
		{"a link pointing out", filepath.Join(dir, "h1", "stolen.pem"), "resolves (through a symbolic link or \"..\") to a file outside --host-tls-dir " + dir},
		{"a relative link pointing out", filepath.Join(dir, "h1", "relative.pem"), "to a file outside --host-tls-dir"},
		{"through a linked directory", filepath.Join(dir, "secrets", "service.key"), "to a file outside --host-tls-dir"},
		{"outside", filepath.Join(outside, "service.key"), "is not under --host-tls-dir " + dir},
		{"a directory", filepath.Join(dir, "h1"), "is not a regular file"},
		{"missing", filepath.Join(dir, "nope.pem"), "no such file or directory"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := p.Resolve("tls.key", tt.path)
			require.ErrorContains(t, err, "tls.key: ")
			require.ErrorContains(t, err, tt.want)
			if filepath.Base(tt.path) != "service.key" {
				require.NotContains(t, err.Error(), outside, "the link's target outside is not shown")
			}
		})
	}
	_, err = Policy{}.Resolve("tls.ca", filepath.Join(dir, "ca.pem"))
	require.ErrorContains(t, err, "tls.ca: TLS files are refused: this scheduler has no --host-tls-dir")

	// Check validates and resolves in one go, each problem by its field.
	s := Spec{Name: "h1", DockerURL: "tcp://10.0.0.2:2376", Address: "10.0.0.2",
		TLS: &TLS{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "h1", "current.pem"), Key: filepath.Join(dir, "h1", "stolen.pem")}}
	_, err = s.Check(p)
	require.ErrorContains(t, err, "tls.key: ")
	require.ErrorContains(t, err, "outside --host-tls-dir")
	s.TLS.Key = filepath.Join(dir, "h1", "key.pem")
	files, err := s.Check(p)
	require.NoError(t, err)
	require.Equal(t, &TLS{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "h1", "key.pem"), Key: filepath.Join(dir, "h1", "key.pem")}, files)
}
