package agent

import (
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/lbagent/internal/acmecert"
	"github.com/berthhq/berth/lbagent/internal/selfsigned"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// Opener opens a secret sealed to this lbagent's role (bus.Conn).
type Opener interface {
	OpenSealed(boxes []msg.SealedKey) ([]byte, error)
}

// certs are the certificates this lbagent serves: those it makes for apps
// with routing.tls.self_signed (selfsigned.Ensure), and in dir/acme those
// the scheduler leader ordered for apps with routing.tls.acme, placed from
// the certificates bucket with their keys opened by keys. Used from the
// agent's Run goroutine only.
type certs struct {
	dir    string
	keys   Opener // nil opens none: apps with tls.acme stay on plain HTTP
	logger *zap.Logger
	served map[string]selfCert // by app
}

func newCerts(dir string, keys Opener, logger *zap.Logger) *certs {
	return &certs{dir: dir, keys: keys, logger: logger, served: map[string]selfCert{}}
}

// selfCert is the record an app with a self-signed or ACME certificate is
// rendered with: its own, with the files of its certificate.
type selfCert struct {
	src, out *msg.App
	notAfter time.Time
	// serial is the ACME certificate's, "" for a self-signed one; files
	// are its files, none while it could not be placed.
	serial string
	files  selfsigned.Cert
	// cert is the ACME certificate served (its names decide which hosts
	// get it); failed the serial of a newer one that could not be placed.
	cert   *msg.Certificate
	failed string
}

// forget drops the certificates of the apps snap lacks. It runs once a
// snapshot is not held back: a state held back as a reset keeps them, so
// an app back before the hold ends keeps its HTTPS.
func (c *certs) forget(snap state.Snapshot) {
	if len(c.served) == 0 {
		return
	}
	present := make(map[string]bool, len(snap.Apps))
	for _, app := range snap.Apps {
		present[app.Spec.Name] = true
	}
	for name := range c.served {
		if !present[name] {
			delete(c.served, name)
		}
	}
}

// apply returns snap with every app whose TLS is self_signed or acme
// rendered from a copy of its record that names its certificate's files
// (made, or made again, as selfsigned.Ensure decides; placed from the
// bucket, as acme decides). The copy is the same pointer from one sync to
// the next while the record and the certificate hold, so an endpoint
// change stays a push. An app whose self-signed certificate cannot be
// made keeps its record: its render fails, and it alone is isolated.
func (c *certs) apply(snap state.Snapshot, now time.Time) state.Snapshot {
	out := snap
	out.Apps = nil
	for i, app := range snap.Apps {
		tls := app.Spec.Routing.TLS
		var sc selfCert
		var ok bool
		switch {
		case tls != nil && tls.ACME:
			sc, ok = c.acme(app, now)
		case tls != nil && tls.SelfSigned:
			sc, ok = c.selfSigned(app, now)
		}
		if !ok {
			continue
		}
		if out.Apps == nil {
			out.Apps = slices.Clone(snap.Apps)
		}
		out.Apps[i] = state.App{Spec: sc.out, Servers: app.Servers, Cert: sc.cert}
	}
	if out.Apps == nil {
		return snap
	}
	return out
}

// selfSigned is the record of an app with tls.self_signed: a copy naming
// the certificate made for its hosts, made again before it expires.
func (c *certs) selfSigned(app state.App, now time.Time) (selfCert, bool) {
	sc, ok := c.served[app.Spec.Name]
	if ok && sc.src == app.Spec && sc.notAfter.Sub(now) > selfsigned.RenewBefore {
		return sc, true
	}
	cert, err := selfsigned.Ensure(c.dir, app.Spec.Name, app.Spec.Routing.Hosts, now)
	if err != nil {
		c.logger.Error("self-signed certificate not made", zap.String("app", app.Spec.Name), zap.Error(err))
		return selfCert{}, false
	}
	sc = selfCert{src: app.Spec, out: withCertFiles(app.Spec, cert), notAfter: cert.NotAfter}
	c.served[app.Spec.Name] = sc
	return sc, true
}

// acme is the record an app with tls.acme is rendered with once its
// certificate is issued: a copy that names the certificate's files, placed
// in dir/acme from the chain and the key opened from its sealed box.
// The copy is kept while the record and the certificate (its serial) hold,
// so the scheduler's periodic republish writes nothing. A certificate that
// does not open or pair, or one missing from the bucket (a NATS that came
// back empty, until the leader puts it again), leaves the one this lbagent
// serves in place while it is valid: nginx never loses HTTPS for it.
// Without any, ok is false and the app is rendered from its record: plain
// HTTP, answering the CA's challenges.
func (c *certs) acme(app state.App, now time.Time) (selfCert, bool) {
	name := app.Spec.Name
	prev, had := c.served[name]
	serving := had && prev.files.Certificate != "" && now.Before(prev.notAfter)
	keep := func() (selfCert, bool) {
		if !serving {
			delete(c.served, name)
			return selfCert{}, false
		}
		if prev.src != app.Spec {
			prev.src, prev.out = app.Spec, withCertFiles(app.Spec, prev.files)
			c.served[name] = prev
		}
		return prev, true
	}
	cert := app.Cert
	if cert == nil {
		return keep()
	}
	if had && prev.src == app.Spec && (prev.serial == cert.Serial || prev.failed == cert.Serial) {
		return prev, prev.files.Certificate != ""
	}
	if had && (prev.serial == cert.Serial && prev.files.Certificate == "" || prev.failed == cert.Serial) {
		return keep() // this certificate failed already: logged once
	}
	fail := func(text string, err error) (selfCert, bool) {
		c.logger.Error(text, zap.String("app", name), zap.String("serial", cert.Serial), zap.Bool("keeps_serving_the_previous", serving), zap.Error(err))
		if serving {
			prev.failed = cert.Serial
			c.served[name] = prev
			return keep()
		}
		c.served[name] = selfCert{src: app.Spec, out: app.Spec, serial: cert.Serial}
		return selfCert{}, false
	}
	if c.keys == nil {
		return fail("an ACME certificate, and no record keys to open it: run lbagent with its role credential (--nats-nkey)", nil)
	}
	key, err := c.keys.OpenSealed(cert.Keys)
	if err != nil {
		return fail("ACME certificate key does not open", err)
	}
	files, err := acmecert.Place(filepath.Join(c.dir, "acme"), cert, key, app.Spec.Routing.Hosts)
	clear(key)
	if err != nil {
		return fail("ACME certificate not placed", err)
	}
	sc := selfCert{src: app.Spec, out: withCertFiles(app.Spec, files), notAfter: files.NotAfter, serial: cert.Serial, files: files, cert: cert}
	c.served[name] = sc
	log := c.logger.Debug
	if !had || prev.serial != cert.Serial {
		log = c.logger.Info
	}
	log("serving an ACME certificate", zap.String("app", name), zap.String("serial", cert.Serial), zap.Time("not_after", files.NotAfter))
	return sc, true
}

// withCertFiles is a copy of app whose TLS names files.
func withCertFiles(app *msg.App, files selfsigned.Cert) *msg.App {
	spec := *app
	t := *app.Routing.TLS
	t.Certificate, t.Key = files.Certificate, files.Key
	spec.Routing.TLS = &t
	return &spec
}
