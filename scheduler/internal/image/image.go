// Package image pins an app's image to what every host then runs: a tag is
// resolved to its registry digest (repo@sha256:…) with go-containerregistry,
// or, for an image that exists only in the hosts' engines (built there,
// never pushed), to its image ID (sha256:…). It is the one importer of
// go-containerregistry outside tests.
//
// The order, for a spec image without a digest:
//
//  1. The engines are asked for the image (a local socket, fast). Found,
//     with no repo digest on any engine, it was built or loaded locally
//     and never pushed nor pulled: no registry can know it, and it is
//     pinned to its image ID without asking one (this also spares a Docker
//     Hub name such as berth-demo:v1 a lookup that would fail). Engines
//     that hold different such images under the name are an error
//     (ErrAmbiguous): nothing could tell which one is meant.
//  2. Otherwise the registry is asked (HEAD, then GET of the manifest),
//     bounded by the resolve timeout: found, it is pinned to repo@digest.
//  3. The registry failing, an image found on the engines is pinned to its
//     repo digest for the same repository when one has it (pullable by
//     every host), else to its ID when they agree (ErrAmbiguous if not).
//  4. Found nowhere, it is not pinned: Pin.Ref is empty and Pin.Reason says
//     why, and the hosts pull the tag as before.
package image

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Sources of a pin.
const (
	// FromSpec: the spec names a digest itself; nothing was resolved.
	FromSpec = "spec"
	// FromRegistry: the registry's digest for the tag.
	FromRegistry = "registry"
	// FromEngine: an image only the engines hold, pinned to its ID (or,
	// the registry failing, to the repo digest an engine recorded).
	FromEngine = "engine"
)

// Pin is what an image reference was pinned to.
type Pin struct {
	// Ref is what every host runs: repo@sha256:… (pull it), or sha256:…
	// (an image ID: a host must hold it already); "" when not pinned.
	Ref string
	// Source is FromSpec, FromRegistry or FromEngine; "" when not pinned.
	Source string
	// Reason says why the image is not pinned, or, pinned from the
	// engines after the registry failed, what the registry answered.
	Reason string
	// NoHealthcheck says that the engines that hold the image (one at
	// least) all found no HEALTHCHECK in it. False when none holds it
	// (then nothing is known) or the spec names a digest (not asked).
	NoHealthcheck bool
}

// IsID reports whether ref is a bare image ID (sha256:…), which no
// registry serves.
func IsID(ref string) bool {
	return strings.HasPrefix(ref, "sha256:") && !strings.Contains(ref, "/") && !strings.Contains(ref, "@")
}

// Digest returns the digest of a pinned ref (repo@sha256:… or sha256:…).
func Digest(ref string) string {
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		return ref[i+1:]
	}
	return ref
}

// Local is an image as the engines hold it.
type Local struct {
	// Host holds it ("" the local engine).
	Host string
	// ID is its image ID (sha256:…).
	ID string
	// RepoDigests are the repo@sha256:… it was pushed or pulled as.
	RepoDigests []string
	// Healthcheck says it declares a HEALTHCHECK (health.type docker
	// needs one, or health.docker.test).
	Healthcheck bool
}

// Engines finds an image in the engines of the hosts. Safe for concurrent
// use.
type Engines interface {
	// Images returns ref as each engine that answers holds it (none when
	// no engine holds it).
	Images(ctx context.Context, ref string) ([]Local, error)
}

// Credentials gives the credential of a registry. Safe for concurrent use.
type Credentials interface {
	// Login returns the credential of the registry (host[:port], Docker
	// Hub as "docker.io"), ok false when there is none.
	Login(registry string) (user, password, identityToken string, ok bool)
}

// Resolver pins image references. Safe for concurrent use.
type Resolver struct {
	// Timeout bounds one resolve, the engines' answer and the registry's
	// together (10 s when 0).
	Timeout time.Duration
	// Engines finds local images; nil asks no engine.
	Engines Engines
	// Credentials gives registry credentials; nil sends none.
	Credentials Credentials
	// Transport carries the registry requests; nil is http.DefaultTransport.
	// Plain HTTP is refused to any registry but a loopback one.
	Transport http.RoundTripper
}

// ErrAmbiguous is an image that the engines hold as different images, with
// no registry to tell which is meant.
var ErrAmbiguous = errors.New("image: the hosts hold different images under one name")

// Resolve pins image (a spec's, already valid). An error is returned only
// for what the operator must fix (ErrAmbiguous); everything else that
// fails leaves the image unpinned, with the reason.
func (r *Resolver) Resolve(ctx context.Context, image string) (pin Pin, err error) {
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return Pin{}, fmt.Errorf("image %q: %w", image, err)
	}
	if d, ok := named.(reference.Digested); ok {
		return Pin{Ref: reference.FamiliarName(named) + "@" + d.Digest().String(), Source: FromSpec}, nil
	}
	named = reference.TagNameOnly(named)
	// One bound for the whole resolve: the engines' answer and the registry's.
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	locals, localErr := r.locals(ctx, image)
	defer func() { pin.NoHealthcheck = noHealthcheck(locals) }()
	if len(locals) > 0 && !pushed(locals) {
		id, err := sameID(image, locals)
		if err != nil {
			return Pin{}, err
		}
		return Pin{Ref: id, Source: FromEngine}, nil
	}
	digest, regErr := r.Registry(ctx, named.String())
	if regErr == nil {
		return Pin{Ref: reference.FamiliarName(named) + "@" + digest, Source: FromRegistry}, nil
	}
	if len(locals) > 0 {
		if rd := repoDigest(named, locals); rd != "" {
			return Pin{Ref: rd, Source: FromEngine, Reason: regErr.Error()}, nil
		}
		id, err := sameID(image, locals)
		if err != nil {
			return Pin{}, fmt.Errorf("%w (and the registry did not answer: %v)", err, regErr)
		}
		return Pin{Ref: id, Source: FromEngine, Reason: regErr.Error()}, nil
	}
	reason := regErr.Error()
	if localErr != nil {
		reason += "; and the engines could not be asked: " + localErr.Error()
	} else if r.Engines != nil {
		reason += "; and no engine holds it"
	}
	return Pin{Reason: reason}, nil
}

// locals asks the engines for image.
func (r *Resolver) locals(ctx context.Context, image string) ([]Local, error) {
	if r.Engines == nil {
		return nil, nil
	}
	return r.Engines.Images(ctx, image)
}

// noHealthcheck reports whether engines hold the image and none found a
// HEALTHCHECK in it.
func noHealthcheck(locals []Local) bool {
	for _, l := range locals {
		if l.Healthcheck {
			return false
		}
	}
	return len(locals) > 0
}

func (r *Resolver) timeout() time.Duration {
	if r.Timeout <= 0 {
		return 10 * time.Second
	}
	return r.Timeout
}

// sameID is the ID the engines that hold image agree on ("" when none
// holds it), or ErrAmbiguous naming each host's.
func sameID(image string, locals []Local) (string, error) {
	id := ""
	for _, l := range locals {
		if id != "" && l.ID != id {
			var parts []string
			for _, l := range locals {
				parts = append(parts, fmt.Sprintf("%s has %s", hostName(l.Host), short(l.ID)))
			}
			return "", fmt.Errorf("%w: %s: %s; push it to a registry, or give every host the same build (docker save | docker load)",
				ErrAmbiguous, image, strings.Join(parts, ", "))
		}
		id = l.ID
	}
	return id, nil
}

// pushed reports whether any engine recorded a repo digest for the image:
// it came from, or went to, a registry.
func pushed(locals []Local) bool {
	for _, l := range locals {
		if len(l.RepoDigests) > 0 {
			return true
		}
	}
	return false
}

// repoDigest is a repo digest the engines recorded for named's repository.
func repoDigest(named reference.Named, locals []Local) string {
	for _, l := range locals {
		for _, rd := range l.RepoDigests {
			n, err := reference.ParseNormalizedNamed(rd)
			if err != nil {
				continue
			}
			if d, ok := n.(reference.Digested); ok && n.Name() == named.Name() {
				return reference.FamiliarName(named) + "@" + d.Digest().String()
			}
		}
	}
	return ""
}

// Registry returns the digest the registry serves for ref (a tag), with
// the registry's credential, bounded by the timeout; one attempt, no
// retries. A loopback registry is spoken to in plain HTTP, as Docker does.
func (r *Resolver) Registry(ctx context.Context, ref string) (string, error) {
	var opts []name.Option
	if host := registryOf(ref); IsLoopback(host) {
		opts = append(opts, name.Insecure)
	}
	tag, err := name.ParseReference(ref, opts...)
	if err != nil {
		return "", fmt.Errorf("registry reference %s: %w", ref, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	ropts := []remote.Option{remote.WithContext(ctx), remote.WithAuth(r.auth(tag.Context().RegistryStr())),
		remote.WithTransport(loopbackOnlyHTTP{next: r.transport()}), remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
		remote.WithUserAgent("berth-scheduler")}
	desc, err := remote.Head(tag, ropts...)
	if err == nil {
		return desc.Digest.String(), nil
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("registry %s: no answer for %s within %s (--resolve-timeout)", tag.Context().RegistryStr(), ref, r.timeout())
	}
	// Some registries answer no HEAD: a GET says more, or works.
	got, gerr := remote.Get(tag, ropts...)
	if gerr == nil {
		return got.Digest.String(), nil
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("registry %s: no answer for %s within %s (--resolve-timeout)", tag.Context().RegistryStr(), ref, r.timeout())
	}
	return "", fmt.Errorf("registry %s: %s: %w", tag.Context().RegistryStr(), ref, gerr)
}

func (r *Resolver) transport() http.RoundTripper {
	if r.Transport != nil {
		return r.Transport
	}
	return http.DefaultTransport
}

// auth is the registry's credential, or anonymous.
func (r *Resolver) auth(registry string) authn.Authenticator {
	if r.Credentials == nil {
		return authn.Anonymous
	}
	if registry == name.DefaultRegistry {
		registry = "docker.io"
	}
	user, pass, token, ok := r.Credentials.Login(registry)
	if !ok {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass, IdentityToken: token})
}

// loopbackOnlyHTTP refuses plain HTTP to any registry but a loopback one:
// go-containerregistry would also fall back to HTTP for private (RFC 1918)
// addresses, where a credential would travel in clear.
type loopbackOnlyHTTP struct{ next http.RoundTripper }

func (t loopbackOnlyHTTP) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !IsLoopback(req.URL.Host) {
		return nil, fmt.Errorf("plain HTTP to registry %s refused: only a loopback registry is spoken to without TLS", req.URL.Host)
	}
	return t.next.RoundTrip(req)
}

// registryOf is the registry host[:port] of a reference, as Docker reads it.
func registryOf(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	return reference.Domain(named)
}

// IsLoopback reports whether a registry host[:port] is localhost or on
// 127.0.0.0/8 or ::1: the registries Docker speaks to without TLS.
func IsLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func hostName(h string) string {
	if h == "" {
		return "the local engine"
	}
	return "host " + h
}

// short is an ID or digest as Docker shows it: 12 hex digits.
func short(id string) string {
	hex := strings.TrimPrefix(id, "sha256:")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	return "sha256:" + hex
}
