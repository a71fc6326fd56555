package hosts

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/berthhq/berth/common/spec"
)

// Policy is what the operator lets a host registration name, from the
// scheduler's flags. The zero Policy is the strictest: no TLS files and no
// loopback address.
type Policy struct {
	// TLSDir is --host-tls-dir, an absolute, clean path: every TLS file of
	// a host lies under it, symbolic links resolved. Empty: TLS files are
	// refused.
	TLSDir string
	// AllowLoopback is --allow-loopback-hosts: a host's address and its
	// docker_url may be loopback, for a test on one machine.
	AllowLoopback bool
}

// Address ranges no host may be reached on, whatever the flags.
var (
	// thisNetwork is 0.0.0.0/8: "this host on this network", never a peer.
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	broadcast   = netip.MustParseAddr("255.255.255.255")
	// nat64 is the well-known NAT64 prefix (RFC 6052): it embeds an IPv4
	// address, which is checked as itself.
	nat64 = netip.MustParsePrefix("64:ff9b::/96")
	// metadata are cloud metadata and platform endpoints outside the
	// link-local range (169.254.169.254 is link-local, refused as such).
	metadata = []netip.Prefix{
		netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS instance metadata over IPv6
		netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
		netip.MustParsePrefix("168.63.129.16/32"),   // Azure WireServer
	}
)

// CheckIP says why a is no address a host's engine or published ports
// may be reached on, or returns nil. Link-local (IPv4 169.254.0.0/16,
// where cloud metadata answers, and IPv6 fe80::/10), unspecified,
// multicast, broadcast, zoned and known cloud metadata addresses are never
// allowed; loopback only with AllowLoopback. An IPv4-mapped or NAT64 IPv6
// address is checked as the IPv4 address it carries. Pure.
func (p Policy) CheckIP(a netip.Addr) error {
	if a.Zone() != "" {
		return errors.New("has a zone: name the host by an address without one")
	}
	a = a.Unmap()
	if a.Is6() && nat64.Contains(a) {
		b := a.As16()
		a = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case a.IsUnspecified() || a.Is4() && thisNetwork.Contains(a):
		return errors.New("is unspecified (0.0.0.0/8, ::): name the address the host is reached on")
	case a.IsLinkLocalUnicast():
		return errors.New("is link-local (169.254.0.0/16, fe80::/10), where cloud metadata endpoints answer: name the host's own routable address")
	case a.IsMulticast() || a == broadcast:
		return errors.New("is multicast or broadcast: name the host's own unicast address")
	}
	for _, m := range metadata {
		if m.Contains(a) {
			return errors.New("is a cloud metadata endpoint: name the host's own address")
		}
	}
	if a.IsLoopback() && !p.AllowLoopback {
		return errors.New("is loopback: every instance there would be reached on the machine that reaches it, not on the host; loopback hosts are only for a test on one machine (the scheduler's --allow-loopback-hosts)")
	}
	return nil
}

// checkTLS checks, without reading them, that the TLS files are clean
// absolute paths under TLSDir.
func (p Policy) checkTLS(es *spec.Errors, t *TLS) {
	if p.TLSDir == "" {
		es.Add("tls", "TLS files are refused: this scheduler has no --host-tls-dir (BERTH_SCHEDULER_HOST_TLS_DIR); put every host's CA, certificate and key in one directory of their own and name it with that flag")
		return
	}
	for _, f := range t.files() {
		if err := spec.CheckFilePath(f.path); err != nil {
			es.Check(f.field, err)
		} else if !within(p.TLSDir, f.path) {
			es.Add(f.field, "%q is not under --host-tls-dir %s: a host's TLS files lie in that directory", f.path, p.TLSDir)
		}
	}
}

type tlsFile struct{ field, path string }

func (t *TLS) files() []tlsFile {
	return []tlsFile{{"tls.ca", t.CA}, {"tls.cert", t.Cert}, {"tls.key", t.Key}}
}

// within reports whether path lies strictly under dir; both are clean.
func within(dir, path string) bool {
	if dir == "/" {
		return false // the whole file system is no confinement
	}
	return strings.HasPrefix(path, dir+string(filepath.Separator))
}

// Resolve returns the file at path, found under TLSDir after every
// symbolic link and ".." is resolved, as the path with no link in it that
// the scheduler reads; or an error naming field, the path and the
// directory. It reads the file system.
func (p Policy) Resolve(field, path string) (string, error) {
	if p.TLSDir == "" {
		return "", fmt.Errorf("%s: TLS files are refused: this scheduler has no --host-tls-dir", field)
	}
	if err := spec.CheckFilePath(path); err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	if !within(p.TLSDir, path) {
		return "", fmt.Errorf("%s: %q is not under --host-tls-dir %s", field, path, p.TLSDir)
	}
	dir, err := filepath.EvalSymlinks(p.TLSDir)
	if err != nil {
		return "", fmt.Errorf("%s: --host-tls-dir %s: %w", field, p.TLSDir, unwrapPath(err))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("%s: %q under --host-tls-dir %s: %w", field, path, p.TLSDir, unwrapPath(err))
	}
	if !within(dir, real) {
		// The link's target is not named: it is outside what may be shown.
		return "", fmt.Errorf("%s: %q resolves (through a symbolic link or \"..\") to a file outside --host-tls-dir %s: put the file itself in that directory", field, path, p.TLSDir)
	}
	st, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%s: %q: %w", field, path, unwrapPath(err))
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %q under --host-tls-dir %s is not a regular file", field, path, p.TLSDir)
	}
	return real, nil
}

// unwrapPath is err without the path an *os.PathError repeats.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Check validates s under p (Validate) and resolves its TLS files under
// TLSDir (Resolve); it returns the resolved files (nil without TLS). It
// reads the file system.
func (s *Spec) Check(p Policy) (*TLS, error) {
	if err := s.Validate(p); err != nil {
		return nil, err
	}
	if s.TLS == nil {
		return nil, nil
	}
	var es spec.Errors
	var out TLS
	dst := []*string{&out.CA, &out.Cert, &out.Key}
	for i, f := range s.TLS.files() {
		real, err := p.Resolve(f.field, f.path)
		if err != nil {
			es.Add(f.field, "%s", strings.TrimPrefix(err.Error(), f.field+": "))
			continue
		}
		*dst[i] = real
	}
	if err := es.Err(); err != nil {
		return nil, err
	}
	return &out, nil
}
