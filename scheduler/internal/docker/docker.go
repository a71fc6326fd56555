// Package docker is the scheduler's only door to the Docker Engine (the
// only importer of the moby client): it lists, creates, starts, stops,
// removes and inspects Berth's containers, streams their events, reads
// their logs, and checks and pulls images. It negotiates the API version and returns
// Berth's own types.
package docker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berthhq/berth/common/spec"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"go.uber.org/zap"
)

// Labels every Berth container carries.
const (
	LabelManaged    = "berth.managed"
	LabelApp        = "berth.app"
	LabelInstance   = "berth.instance"
	LabelGeneration = "berth.generation"
	LabelSpecHash   = "berth.spec-hash"
	LabelTerm       = "berth.term"
	// LabelPrefix is the environment (--prefix) a container belongs to:
	// several Berth environments can share one Docker host, and each
	// scheduler only sees, adopts and removes its own.
	LabelPrefix = "berth.prefix"
	// LabelHost is the registered host a container was placed on; none on
	// the local engine of a scheduler without registered hosts. One engine
	// registered twice lists each container under its own name only.
	LabelHost = "berth.host"
	// LabelPort is the container port nginx sends traffic to: on
	// --network, the container is reached there.
	LabelPort = "berth.port"
	// LabelRelease marks a release task's container ("true"): a one-off
	// run of a new version (its instance label is ReleaseInstance of its
	// generation), never an instance, never routed.
	LabelRelease = "berth.release"
)

// ReleaseInstance is the instance label of the release container of an
// app's generation: its container is named berth-<app>-release-<gen>, so
// an engine refuses a second one of the same generation.
func ReleaseInstance(generation int64) string { return "release-" + strconv.FormatInt(generation, 10) }

// Errors of the adapter.
var (
	// ErrNotFound is a container that does not exist.
	ErrNotFound = errors.New("docker: no such container")
	// ErrImageNotFound is an image that is neither present nor pullable.
	ErrImageNotFound = errors.New("docker: image not found")
)

// Options configure the client.
type Options struct {
	// Prefix is the environment this client manages; containers of other
	// prefixes are invisible to it. Required.
	Prefix string
	// PublishAddress is the host address container ports are published on
	// (a Docker-chosen host port) when Network is empty.
	PublishAddress string
	// Network, when set, attaches containers to this Docker network and
	// reaches them by their address on it instead of publishing ports.
	Network string
	// NetworkPrefixes (--network-cidr) hold every container address on
	// Network: an engine that reports one outside them is refused
	// (ErrForeignAddress). A registered host on a Network needs them.
	NetworkPrefixes []netip.Prefix
	// Allowed, when set, refuses addresses no host is reached on (loopback,
	// link-local, …; hosts.Policy.CheckIP): the engine's own address as
	// resolved at each connection to a tcp:// URL, and a container's
	// address on Network.
	Allowed func(netip.Addr) error
	// RegistryAuths are the registry credentials (from
	// --registry-auth-file) this engine may receive; a pull sends only its
	// registry's. Nil sends none. Never logged.
	RegistryAuths *RegistryAuths
	// Host is the registered host this client drives ("": the local
	// engine, without registered hosts); URL its engine (unix:// or
	// tcp://; empty: DOCKER_HOST or the default socket) and TLS the files
	// of a tcp:// engine.
	Host string
	URL  string
	TLS  *TLSFiles
	// LogMaxSize and LogMaxFiles are the log limits of a container whose
	// spec sets none (--log-max-size, --log-max-files); zero:
	// spec.DefaultLogMaxSize and spec.DefaultLogMaxFiles.
	LogMaxSize  spec.LogSize
	LogMaxFiles int
}

// TLSFiles are a tcp:// engine's client files.
type TLSFiles struct {
	CA, Cert, Key string
}

// Client talks to the Docker Engine. It is safe for concurrent use.
type Client struct {
	c      *client.Client
	o      Options
	reach  reach
	logger *zap.Logger
}

// New connects through DOCKER_HOST (or the default socket) and negotiates
// the API version with the engine.
func New(o Options, logger *zap.Logger) (*Client, error) {
	if o.Prefix == "" {
		return nil, errors.New("docker client: a prefix (environment) is required")
	}
	if o.PublishAddress == "" {
		o.PublishAddress = "127.0.0.1"
	}
	publish, err := netip.ParseAddr(o.PublishAddress)
	if err != nil {
		return nil, fmt.Errorf("publish address %q: must be an IP address", o.PublishAddress)
	}
	// A registered host's client takes nothing from the scheduler's own
	// DOCKER_* environment (its TLS files or API version are the local
	// engine's). The API version is negotiated either way.
	opts := []client.Opt{client.FromEnv}
	if o.URL != "" {
		opts = []client.Opt{client.WithHost(o.URL)}
		if o.TLS != nil {
			opts = append(opts, client.WithTLSClientConfig(o.TLS.CA, o.TLS.Cert, o.TLS.Key))
		}
		if strings.HasPrefix(o.URL, "tcp://") && o.Allowed != nil {
			opts = append(opts, client.WithDialContext(guardedDialer(o.Allowed).DialContext))
		}
	}
	c, err := client.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	logger = logger.Named("docker")
	if o.Host != "" {
		logger = logger.With(zap.String("host", o.Host))
	}
	if hosts := o.RegistryAuths.Hosts(); len(hosts) > 0 {
		logger.Info("registry credentials loaded", zap.Strings("registries", hosts))
	}
	return &Client{c: c, o: o, logger: logger,
		reach: reach{host: o.Host, publish: publish, network: o.Network, prefixes: o.NetworkPrefixes, allowed: o.Allowed}}, nil
}

// guardedDialer connects to an engine only at an address allowed passes,
// checked after name resolution, so a host name cannot lead the client to
// an address its registration could not name.
func guardedDialer(allowed func(netip.Addr) error) *net.Dialer {
	return &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("docker engine address %s: %w", address, err)
			}
			if err := allowed(ap.Addr()); err != nil {
				return fmt.Errorf("docker engine address %s %w", ap.Addr(), err)
			}
			return nil
		}}
}

// Close releases the client.
func (c *Client) Close() error { return c.c.Close() }

// Ping checks that the engine answers and returns its API version.
func (c *Client) Ping(ctx context.Context) (string, error) {
	p, err := c.c.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	if err != nil {
		return "", fmt.Errorf("docker ping: %w", err)
	}
	return p.APIVersion, nil
}

// Container is one of Berth's containers as Docker sees it.
type Container struct {
	// Host is the registered host it runs on ("": the local engine).
	Host       string
	ID         string
	Name       string
	App        string
	Instance   string
	Generation int64
	SpecHash   string
	Term       uint64
	// State is Docker's: created, running, paused, restarting, removing, exited, dead.
	State     string
	Running   bool
	OOMKilled bool
	ExitCode  int
	// Address is where nginx and healthd reach the app port: the
	// published 127.0.0.1:port, or the container's address on Network.
	Address   string
	StartedAt time.Time
	// Release says it is a release task's container (LabelRelease).
	Release bool
	// Health is Docker's health of it (Health… constants), "" without a
	// HEALTHCHECK; HealthLog its last result. Inspect only.
	Health    string
	HealthLog HealthLog
}

func fromLabels(c *Container, labels map[string]string) {
	c.Host = labels[LabelHost]
	c.App, c.Instance, c.SpecHash = labels[LabelApp], labels[LabelInstance], labels[LabelSpecHash]
	c.Generation, _ = strconv.ParseInt(labels[LabelGeneration], 10, 64)
	c.Term, _ = strconv.ParseUint(labels[LabelTerm], 10, 64)
	c.Release = labels[LabelRelease] == "true"
}

// mine filters Berth's containers of this client's prefix (and host).
func (c *Client) mine() client.Filters {
	f := client.Filters{}.Add("label", LabelManaged+"=true", LabelPrefix+"="+c.o.Prefix)
	if c.o.Host != "" {
		f = f.Add("label", LabelHost+"="+c.o.Host)
	}
	return f
}

// ours reports whether a container of this prefix is this client's: a
// registered host's carry its name, the local engine's none.
func (c *Client) ours(labels map[string]string) bool { return labels[LabelHost] == c.o.Host }

// Host is the registered host this client drives ("": the local engine).
func (c *Client) Host() string { return c.o.Host }

// List returns every container labelled berth.managed=true of this
// client's prefix, running or not.
func (c *Client) List(ctx context.Context) ([]Container, error) {
	res, err := c.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: c.mine()})
	if err != nil {
		return nil, fmt.Errorf("docker list: %w", err)
	}
	out := make([]Container, 0, len(res.Items))
	for _, s := range res.Items {
		if !c.ours(s.Labels) {
			continue
		}
		ct := Container{ID: s.ID, State: string(s.State), Running: s.State == container.StateRunning}
		if len(s.Names) > 0 {
			ct.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		fromLabels(&ct, s.Labels)
		out = append(out, ct)
	}
	return out, nil
}

// CreateOptions describe one instance's container.
type CreateOptions struct {
	// Host is the registered host to create it on ("": the local
	// engine); a fleet routes by it, a single client ignores it.
	Host          string
	App, Instance string
	Generation    int64
	SpecHash      string
	Term          uint64
	Image         string
	Command       []string
	Env           map[string]string
	// Port is the container port nginx sends traffic to.
	Port int
	// CPU is in cores; Memory in bytes; zero means no limit.
	CPU    float64
	Memory int64
	// Pids caps the processes and threads the container may run; zero
	// means spec.DefaultPids. A container is never without this cap.
	Pids int
	// StopSignal and StopGrace are what Stop uses by default.
	StopSignal string
	StopGrace  time.Duration
	// Logging is the spec's log limits; nil or zero fields: the client's
	// defaults (Options.LogMaxSize, LogMaxFiles).
	Logging *spec.Logging
	// Health overrides the image's HEALTHCHECK (health.docker); nil
	// keeps the image's.
	Health *spec.DockerHealth
	// Release makes it a release task's container (LabelRelease): it
	// publishes and exposes no port (Port is ignored), and still joins
	// Options.Network when set, to reach what the app reaches.
	Release bool
}

// Name is the container name of an instance: berth-<app>-<instance>.
func Name(app, instance string) string { return "berth-" + app + "-" + instance }

// securityOpts are the Docker security options of every container Berth
// creates: its processes cannot gain privileges (setuid binaries, file
// capabilities) beyond those they start with.
var securityOpts = []string{"no-new-privileges:true"}

// Create creates (does not start) an instance's container. A missing
// image is ErrImageNotFound: pull it first. Every container gets
// no-new-privileges, a pids limit (o.Pids, or spec.DefaultPids) and the
// json-file log driver with a size and file limit (o.Logging, or the
// client's defaults), whatever the engine's default driver is.
func (c *Client) Create(ctx context.Context, o CreateOptions) (string, error) {
	port, err := network.ParsePort(fmt.Sprintf("%d/tcp", o.Port))
	if err != nil && !o.Release {
		return "", fmt.Errorf("docker create %s: port %d: %w", Name(o.App, o.Instance), o.Port, err)
	}
	env := make([]string, 0, len(o.Env)+1)
	for k, v := range o.Env {
		env = append(env, k+"="+v)
	}
	env = append(env, "BERTH_INSTANCE="+o.Instance)
	grace := int(o.StopGrace / time.Second)
	cfg := &container.Config{
		Image: o.Image, Cmd: o.Command, Env: env, ExposedPorts: network.PortSet{port: {}},
		StopSignal: o.StopSignal, StopTimeout: &grace, Healthcheck: healthConfig(o.Health),
		Labels: map[string]string{
			LabelManaged: "true", LabelPrefix: c.o.Prefix, LabelApp: o.App, LabelInstance: o.Instance,
			LabelGeneration: strconv.FormatInt(o.Generation, 10), LabelSpecHash: o.SpecHash, LabelTerm: strconv.FormatUint(o.Term, 10),
			LabelPort: strconv.Itoa(o.Port),
		},
	}
	if c.o.Host != "" {
		cfg.Labels[LabelHost] = c.o.Host
	}
	if o.Release {
		cfg.ExposedPorts = nil
		cfg.Labels[LabelRelease] = "true"
		delete(cfg.Labels, LabelPort)
	}
	pids := int64(o.Pids)
	if pids <= 0 {
		pids = spec.DefaultPids
	}
	host := &container.HostConfig{
		Resources:   container.Resources{NanoCPUs: int64(o.CPU * 1e9), Memory: o.Memory, PidsLimit: &pids},
		SecurityOpt: slices.Clone(securityOpts),
		// Berth restarts instances itself, with backoff and a budget.
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		LogConfig:     c.logConfig(o.Logging),
	}
	var netCfg *network.NetworkingConfig
	switch {
	case c.o.Network == "" && o.Release:
		// Nothing reaches a release container: it publishes nothing.
	case c.o.Network == "":
		host.PortBindings = network.PortMap{port: {{HostIP: netip.MustParseAddr(c.o.PublishAddress), HostPort: ""}}}
	default:
		host.NetworkMode = container.NetworkMode(c.o.Network)
		netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{c.o.Network: {}}}
	}
	res, err := c.c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: Name(o.App, o.Instance), Config: cfg, HostConfig: host, NetworkingConfig: netCfg})
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("docker create %s: image %s: %w", Name(o.App, o.Instance), o.Image, ErrImageNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("docker create %s: %w", Name(o.App, o.Instance), err)
	}
	return res.ID, nil
}

// Start starts a created container.
func (c *Client) Start(ctx context.Context, id string) error {
	if _, err := c.c.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return fmt.Errorf("docker start %s: %w", ShortID(id), notFound(err))
	}
	return nil
}

// Stop sends signal (empty: the container's stop signal) and kills the
// container after grace.
func (c *Client) Stop(ctx context.Context, id, signal string, grace time.Duration) error {
	secs := int(grace / time.Second)
	if _, err := c.c.ContainerStop(ctx, id, client.ContainerStopOptions{Signal: signal, Timeout: &secs}); err != nil {
		return fmt.Errorf("docker stop %s: %w", ShortID(id), notFound(err))
	}
	return nil
}

// Remove removes a container, killing it if it still runs.
func (c *Client) Remove(ctx context.Context, id string) error {
	if _, err := c.c.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
		return fmt.Errorf("docker remove %s: %w", ShortID(id), notFound(err))
	}
	return nil
}

// Inspect returns a container with its address and exit state. Its host
// is this client's, whatever its labels say. An address the engine reports
// that is not where this host's containers are reached (a port published
// on another address, an address on Network outside NetworkPrefixes) is
// an *AddressError (ErrForeignAddress), with the container as reported
// but no address.
func (c *Client) Inspect(ctx context.Context, id string) (Container, error) {
	res, err := c.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return Container{}, fmt.Errorf("docker inspect %s: %w", ShortID(id), notFound(err))
	}
	r := res.Container
	ct := Container{ID: r.ID, Name: strings.TrimPrefix(r.Name, "/")}
	var labels map[string]string
	if r.Config != nil {
		labels = r.Config.Labels
		fromLabels(&ct, labels)
	}
	ct.Host = c.o.Host
	if s := r.State; s != nil {
		ct.State, ct.Running, ct.OOMKilled, ct.ExitCode = string(s.Status), s.Running, s.OOMKilled, s.ExitCode
		ct.StartedAt, _ = time.Parse(time.RFC3339Nano, s.StartedAt)
		fromHealth(&ct, s.Health)
	}
	ns := r.NetworkSettings
	if ns == nil || ct.Release {
		return ct, nil // a release container is reached by no one
	}
	var addr, reported string
	if c.o.Network != "" {
		var ip netip.Addr
		if ep := ns.Networks[c.o.Network]; ep != nil {
			ip = ep.IPAddress
		}
		port, _ := strconv.ParseUint(labels[LabelPort], 10, 16)
		var exposed []uint16
		if r.Config != nil {
			for p := range r.Config.ExposedPorts {
				if p.Proto() == network.TCP {
					exposed = append(exposed, p.Num())
				}
			}
		}
		addr, reported, err = c.reach.onNetwork(ip, uint16(port), exposed)
	} else {
		var bs []binding
		for _, bindings := range ns.Ports {
			for _, b := range bindings {
				bs = append(bs, binding{ip: b.HostIP, port: b.HostPort})
			}
		}
		addr, reported, err = c.reach.published(bs)
	}
	if err != nil {
		return ct, &AddressError{Host: c.o.Host, Container: ct.ID, Address: reported, Reason: err.Error()}
	}
	ct.Address = addr
	return ct, nil
}

// ImagePresent reports whether ref is in the local image store.
func (c *Client) ImagePresent(ctx context.Context, ref string) (bool, error) {
	_, err := c.c.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("docker image %s: %w", ref, err)
	}
	return true, nil
}

// ImageInfo is an image as an engine holds it.
type ImageInfo struct {
	// ID is the image ID (sha256:…).
	ID string
	// RepoDigests are the repo@sha256:… it was pushed or pulled as; none
	// for an image built or loaded on this engine alone.
	RepoDigests []string
	// Healthcheck says it declares a HEALTHCHECK (not NONE).
	Healthcheck bool
}

// Image returns ref (a name, repo@digest or an ID) as this engine holds
// it, or an error wrapping ErrImageNotFound.
func (c *Client) Image(ctx context.Context, ref string) (ImageInfo, error) {
	r, err := c.c.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return ImageInfo{}, fmt.Errorf("docker image %s: %w", ref, ErrImageNotFound)
	}
	if err != nil {
		return ImageInfo{}, fmt.Errorf("docker image %s: %w", ref, err)
	}
	info := ImageInfo{ID: r.ID, RepoDigests: r.RepoDigests}
	if r.Config != nil {
		info.Healthcheck = hasHealthcheck(r.Config.Healthcheck)
	}
	return info, nil
}

// Pull fetches ref, bounded by timeout. Any failure names the image and
// wraps ErrImageNotFound when the registry has no such image.
func (c *Client) Pull(ctx context.Context, ref string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.c.ImagePull(ctx, ref, client.ImagePullOptions{RegistryAuth: c.o.RegistryAuths.For(ref)})
	if err == nil {
		err = resp.Wait(ctx)
		resp.Close()
	}
	if err == nil {
		return nil
	}
	if cerrdefs.IsNotFound(err) {
		err = ErrImageNotFound
	}
	if reg := c.o.RegistryAuths.Withheld(ref); reg != "" {
		return fmt.Errorf("pull %s: %w (pulled without credentials: host %s is not allowed the credential of registry %s from --registry-auth-file; "+
			"if the image needs it, register the host again with it: scheduler hosts add %s … --registry %s, or \"registries\" in PUT /v1/hosts/%s)",
			ref, err, c.o.Host, reg, c.o.Host, reg, c.o.Host)
	}
	return fmt.Errorf("pull %s: %w", ref, err)
}

// Event is a container event of one of Berth's containers.
type Event struct {
	// Action is start, die, oom, kill, stop, destroy or health_status.
	Action      string
	ContainerID string
	App         string
	Instance    string
	// Host is the registered host it runs on ("": the local engine).
	Host     string
	ExitCode int
	Time     time.Time
	// Release says it is a release task's container.
	Release bool
	// Health is Docker's new health status of a health_status event
	// (Health… constants).
	Health string
}

// Events streams the events of Berth's containers to handle until ctx
// ends. After the stream breaks it reconnects with backoff and calls
// resync, since events sent meanwhile are lost: the caller re-lists.
func (c *Client) Events(ctx context.Context, handle func(Event), resync func()) error {
	backoff := 100 * time.Millisecond
	for {
		started := time.Now()
		err := c.streamEvents(ctx, handle)
		if ctx.Err() != nil {
			return nil
		}
		c.logger.Warn("docker event stream broke, reconnecting", zap.Error(err), zap.Duration("wait", backoff))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if time.Since(started) > time.Minute {
			backoff = 100 * time.Millisecond
		} else {
			backoff = min(backoff*2, 5*time.Second)
		}
		resync()
	}
}

func (c *Client) streamEvents(ctx context.Context, handle func(Event)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := c.c.Events(ctx, client.EventsListOptions{Filters: c.mine().Add("type", string(events.ContainerEventType))})
	for {
		select {
		case m := <-res.Messages:
			if !c.ours(m.Actor.Attributes) {
				continue
			}
			action, health := string(m.Action), ""
			if i := strings.IndexByte(action, ':'); i > 0 { // "health_status: healthy"
				action, health = action[:i], strings.TrimSpace(action[i+1:])
			}
			e := Event{Action: action, ContainerID: m.Actor.ID, App: m.Actor.Attributes[LabelApp],
				Instance: m.Actor.Attributes[LabelInstance], Host: c.o.Host, Time: time.Unix(0, m.TimeNano), Health: health}
			e.ExitCode, _ = strconv.Atoi(m.Actor.Attributes["exitCode"])
			e.Release = m.Actor.Attributes[LabelRelease] == "true"
			handle(e)
		case err := <-res.Err:
			return err
		}
	}
}

func notFound(err error) error {
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return err
}

// ShortID is a container id as Docker shows it: its first 12 digits.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
