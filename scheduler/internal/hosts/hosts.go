// Package hosts is the registry of Docker hosts as operators write it
// (`scheduler hosts add`, PUT /v1/hosts/{name}): the registration and its
// strict validation, pure.
package hosts

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"strconv"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// MaxLabels caps a host's labels.
const MaxLabels = 64

// Spec registers one host: how to reach its engine, where its published
// ports are reached, its labels and capacity.
type Spec struct {
	Name string `json:"name"`
	// DockerURL is unix:///path/docker.sock or tcp://host:port.
	DockerURL string `json:"docker_url"`
	// TLS are the client files of a tcp:// engine: the CA that signed the
	// engine's certificate, and the client certificate and key.
	TLS *TLS `json:"tls,omitempty"`
	// Address is the IP the host's published ports are reached on.
	Address string            `json:"address"`
	Labels  map[string]string `json:"labels,omitempty"`
	// CPU (cores) and Memory are what instances may reserve there; zero
	// (or absent): no limit.
	CPU    float64       `json:"cpu,omitempty"`
	Memory spec.ByteSize `json:"memory,omitempty"`
}

// TLS are a tcp:// engine's client files.
type TLS struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Validate returns every problem, each naming its field.
func (s *Spec) Validate() error {
	var es spec.Errors
	es.Check("name", spec.CheckName(s.Name))
	u, err := url.Parse(s.DockerURL)
	switch {
	case s.DockerURL == "":
		es.Add("docker_url", "must be set: unix:///var/run/docker.sock, or tcp://HOST:2376 with tls")
	case err != nil:
		es.Add("docker_url", "%q is not a URL: want unix:///path or tcp://host:port", s.DockerURL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		es.Add("docker_url", "%q: no user, query or fragment: unix:///path or tcp://host:port", s.DockerURL)
	case u.Scheme == "unix":
		if u.Host != "" || u.Path == "" || !path.IsAbs(u.Path) || path.Clean(u.Path) != u.Path {
			es.Add("docker_url", "%q: a unix URL names an absolute, clean socket path (unix:///var/run/docker.sock)", s.DockerURL)
		} else {
			es.Check("docker_url", spec.CheckFilePath(u.Path))
		}
		if s.TLS != nil {
			es.Add("tls", "is for a tcp:// engine; a unix socket needs none")
		}
	case u.Scheme == "tcp":
		host, port := u.Hostname(), u.Port()
		if p, err := strconv.Atoi(port); host == "" || err != nil || p < 1 || p > 65535 || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" {
			es.Add("docker_url", "%q: a tcp URL is tcp://host:port and nothing else", s.DockerURL)
		} else if err := spec.CheckHost(host); err != nil {
			if _, ipErr := netip.ParseAddr(host); ipErr != nil {
				es.Add("docker_url", "%q: the host is neither a host name nor an IP address", s.DockerURL)
			}
		}
		if s.TLS == nil {
			if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
				es.Add("tls", "must be set for a tcp:// engine off loopback: the Docker API without TLS is root on that host for anyone who reaches its port")
			}
		}
	default:
		es.Add("docker_url", "%q: the scheme must be unix or tcp", s.DockerURL)
	}
	if s.TLS != nil {
		es.Check("tls.ca", spec.CheckFilePath(s.TLS.CA))
		es.Check("tls.cert", spec.CheckFilePath(s.TLS.Cert))
		es.Check("tls.key", spec.CheckFilePath(s.TLS.Key))
	}
	if a, err := netip.ParseAddr(s.Address); err != nil || a.Zone() != "" || a.IsUnspecified() {
		es.Add("address", "%q must be the IP address the host's published ports are reached on (no zone, not 0.0.0.0)", s.Address)
	}
	if len(s.Labels) > MaxLabels {
		es.Add("labels", "has %d labels; at most %d", len(s.Labels), MaxLabels)
	}
	for k, v := range s.Labels {
		es.Check(spec.Key("labels", k), spec.CheckLabelKey(k))
		es.Check(spec.Key("labels", k), spec.CheckLabelValue(v))
	}
	if s.CPU < 0 || s.CPU > 4096 {
		es.Add("cpu", "(%g) must be between 0 (no limit) and 4096 cores", s.CPU)
	}
	if s.Memory < 0 || s.Memory > 1<<50 {
		es.Add("memory", "must be between 0 (no limit) and 1Pi")
	}
	return es.Err()
}

// Record is the spec as the store keeps it.
func (s *Spec) Record() store.Host {
	h := store.Host{Name: s.Name, DockerURL: s.DockerURL, Address: s.Address, Labels: s.Labels, CPU: s.CPU, Memory: int64(s.Memory)}
	if s.TLS != nil {
		h.TLSCA, h.TLSCert, h.TLSKey = s.TLS.CA, s.TLS.Cert, s.TLS.Key
	}
	return h
}

// FromRecord is a stored host as a spec.
func FromRecord(h store.Host) Spec {
	s := Spec{Name: h.Name, DockerURL: h.DockerURL, Address: h.Address, Labels: h.Labels, CPU: h.CPU, Memory: spec.ByteSize(h.Memory)}
	if h.TLSCA != "" || h.TLSCert != "" || h.TLSKey != "" {
		s.TLS = &TLS{CA: h.TLSCA, Cert: h.TLSCert, Key: h.TLSKey}
	}
	return s
}

// String names a host for messages.
func (s *Spec) String() string { return fmt.Sprintf("%s (%s)", s.Name, s.DockerURL) }
