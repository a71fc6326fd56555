// Package acmecert places the ACME certificates the scheduler leader
// publishes (bucket certificates) where nginx reads them: the chain and
// its private key, opened from the box sealed to the lbagent role, as
// files of their own per certificate, the key mode 0600.
package acmecert

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/atomicfile"
	"github.com/berthhq/berth/lbagent/internal/selfsigned"
)

// Place writes c with its private key (PEM) into dir as
// <app>.<end>-<serial>.crt and .key, where <end> is the fixed-width Unix
// time of its expiry, so that a new certificate changes the config that
// names it and nginx reloads to serve it. It refuses a key that does not
// pair with the chain's leaf, and a certificate that covers none of hosts. The certificate before it is kept (a config rolled back still
// finds its files); older ones are removed. Files already there are kept
// as they are.
func Place(dir string, c *msg.Certificate, key []byte, hosts []string) (selfsigned.Cert, error) {
	pair, err := tls.X509KeyPair([]byte(c.Chain), key)
	if err != nil {
		return selfsigned.Cert{}, fmt.Errorf("certificate of %s: the chain and the key do not pair: %w", c.App, err)
	}
	// A certificate that covers some of the hosts is served for all of
	// them: when the hosts change, the old certificate keeps serving the
	// hosts it covers until the new one arrives, rather than none.
	covers := false
	for _, h := range hosts {
		covers = covers || pair.Leaf.VerifyHostname(h) == nil
	}
	if !covers {
		return selfsigned.Cert{}, fmt.Errorf("certificate of %s covers none of its hosts %s (it covers %s)", c.App, strings.Join(hosts, ", "), strings.Join(pair.Leaf.DNSNames, ", "))
	}
	base := filepath.Join(dir, fmt.Sprintf("%s.%012d-%s", c.App, pair.Leaf.NotAfter.Unix(), c.Serial))
	out := selfsigned.Cert{Certificate: base + ".crt", Key: base + ".key", NotAfter: pair.Leaf.NotAfter}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return out, fmt.Errorf("certificate of %s: %w", c.App, err)
	}
	if have, err := os.ReadFile(out.Certificate); err == nil && string(have) == c.Chain {
		if _, err := os.Stat(out.Key); err == nil {
			return out, nil
		}
	}
	// The key first: a certificate on disk always has its key.
	if err := atomicfile.Write(out.Key, key, 0o600); err != nil {
		return out, err
	}
	if err := atomicfile.Write(out.Certificate, []byte(c.Chain), 0o644); err != nil {
		return out, err
	}
	found, _ := filepath.Glob(filepath.Join(dir, c.App+".*.crt"))
	slices.Sort(found) // by end
	found = slices.DeleteFunc(found, func(f string) bool { return f == out.Certificate })
	if len(found) > 1 {
		for _, old := range found[:len(found)-1] {
			_ = os.Remove(old)
			_ = os.Remove(strings.TrimSuffix(old, ".crt") + ".key")
		}
	}
	return out, nil
}
