// Package selfsigned makes and renews the certificates lbagent serves for
// apps with routing.tls.self_signed: one per app, for the app's hosts,
// made by each lbagent for itself (a development certificate no client
// trusts, so nothing needs to be shared), kept on disk with the key mode
// 0600, and made again when the hosts change or it is within RenewBefore
// of expiry.
package selfsigned

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth/lbagent/internal/atomicfile"
)

// Validity is how long a certificate is valid; RenewBefore how long before
// its end it is made again.
const (
	Validity    = 90 * 24 * time.Hour
	RenewBefore = 30 * 24 * time.Hour
)

// Cert is an app's certificate and key files, and when the certificate ends.
type Cert struct {
	Certificate, Key string
	NotAfter         time.Time
}

// Ensure returns app's certificate for hosts in dir, making it (again)
// when there is none, its names are not hosts, or it ends within
// RenewBefore of now. Each certificate has files of its own,
// <app>.<end>.crt and .key, so that a new one changes the config that
// names it, and nginx reloads to serve it (<end> is a fixed-width Unix
// time, then a random part); the one before it is kept (a
// config that is rolled back still finds its files), older ones removed.
func Ensure(dir, app string, hosts []string, now time.Time) (Cert, error) {
	want := names(hosts)
	if len(want) == 0 {
		return Cert{}, errors.New("self-signed certificate: no host")
	}
	found, _ := filepath.Glob(filepath.Join(dir, app+".*.crt"))
	slices.Sort(found) // by end: the suffix is a fixed-width Unix time
	for i := len(found) - 1; i >= 0; i-- {
		cert, err := read(found[i])
		if err != nil || !slices.Equal(names(cert.DNSNames), want) || cert.NotAfter.Sub(now) <= RenewBefore {
			continue
		}
		c := Cert{Certificate: found[i], Key: strings.TrimSuffix(found[i], ".crt") + ".key", NotAfter: cert.NotAfter}
		if _, err := os.Stat(c.Key); err == nil {
			return c, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Cert{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	end := now.Add(Validity).Truncate(time.Second)
	base := filepath.Join(dir, fmt.Sprintf("%s.%012d-%x", app, end.Unix(), serialHint()))
	c := Cert{Certificate: base + ".crt", Key: base + ".key"}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, fmt.Errorf("self-signed certificate: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return c, fmt.Errorf("self-signed certificate: %w", err)
	}
	c.NotAfter = end
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: want[0], Organization: []string{"Berth self-signed (" + app + ")"}},
		DNSNames:              want,
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              c.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return c, fmt.Errorf("self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return c, fmt.Errorf("self-signed certificate: %w", err)
	}
	// The key first: a certificate on disk always has its key.
	if err := atomicfile.Write(c.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return c, err
	}
	if err := atomicfile.Write(c.Certificate, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return c, err
	}
	// Keep this one and the newest before it.
	if len(found) > 1 {
		for _, old := range found[:len(found)-1] {
			_ = os.Remove(old)
			_ = os.Remove(strings.TrimSuffix(old, ".crt") + ".key")
		}
	}
	return c, nil
}

// serialHint tells apart two certificates made in one second.
func serialHint() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func read(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// names are hosts lower-cased, sorted, without duplicates.
func names(hosts []string) []string {
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, strings.ToLower(h))
	}
	slices.Sort(out)
	return slices.Compact(out)
}
