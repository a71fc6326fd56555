package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/view"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/certs"
	"github.com/berthhq/berth/scheduler/internal/leader"
	"github.com/berthhq/berth/scheduler/internal/nodekeys"
	"github.com/berthhq/berth/scheduler/internal/publish"
	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// stopTimeout bounds a replica's soft stop.
const stopTimeout = 15 * time.Second

// run runs every part until ctx ends: what every replica does in one
// lifecycle group, and the leader-only services in the leader group,
// which the elector starts and stops.
func (r *replica) run(ctx context.Context) error {
	r.addLeaderServices()
	group := lifecycle.NewGroup(r.logger, stopTimeout)
	group.Add("fleet", r.fl) // every replica observes the hosts
	group.Add("leader", lifecycle.Func(func(ctx context.Context) error { return leader.Campaign(ctx, r.el, r.lead) }))
	group.Add("listen", lifecycle.Func(r.listen))
	group.Add("watch-health", bus.NewWatcher(r.nats.conn, r.names.HealthBucket(), bus.Message[*msg.Health], bus.MarkHealthSealer(r.healthTbl.Handler()), r.logger))
	// lbagent never deletes its record (it expires, and drains age it by
	// its updated_at): a delete can only come from another NATS client, and
	// believing it would let a drain skip an nginx that still routes.
	agents := view.KeepOnDelete(r.agentsTbl.Handler(), func(key string) {
		r.logger.Warn("ignored the delete of an lbagent's record: lbagents never delete theirs", zap.String("node", key))
	})
	group.Add("watch-agents", bus.NewWatcher(r.nats.conn, r.names.AgentsBucket(), bus.Message[*msg.Agent], agents, r.logger))
	group.Add("console-live", lifecycle.Func(r.feedConsole))
	group.Add("scaler-intake", r.sc) // the samples and policies, for the API and the next leader
	if r.nodeDir != nil {
		r.nodeDir.OnChange = r.repairCerts // seal every certificate key again, to the keys as they are now
		group.Add("node-directory", r.nodeDir)
	}
	if r.nk != nil {
		group.Add("node-keys-users", r.nk) // the embedded NATS's users
	}
	group.Add("api-tokens", lifecycle.Func(r.keys.Run))
	group.Add("api", lifecycle.Serve(r.httpSrv, r.apiLn))
	a := r.cfg.API
	r.logger.Info("scheduler started", zap.String("api", a.Listen), zap.Bool("api_tls", a.Cert != nil),
		zap.Bool("api_open_without_token", a.Open), zap.String("database", store.Redact(r.cfg.DatabaseURL)))
	return group.Run(ctx)
}

// feedConsole sends the events NATS carries to the console's browsers on
// this replica, leader or follower, until ctx ends.
func (r *replica) feedConsole(ctx context.Context) error {
	dropped := func(subject string, err error) {
		r.logger.Debug("the console dropped an event it cannot decode", zap.String("subject", subject), zap.Error(err))
	}
	sub, err := r.nats.conn.Subscribe(r.names.AllEvents(), bus.Decoded(msg.DecodeAs[*msg.Event], func(_ string, ev *msg.Event) { r.live.Publish(ev) }, dropped))
	if err != nil {
		return err
	}
	<-ctx.Done()
	return sub.Drain()
}

// addLeaderServices fills the leader group: what only the leader does.
func (r *replica) addLeaderServices() {
	watch := publish.BusWatch(r.nats.conn, r.logger)
	leading := r.el.Leader
	r.lead.Add("controller", r.ctl)
	r.lead.Add("health-checks", r.checks)
	r.lead.Add("scaler", lifecycle.Func(r.sc.Lead))
	r.lead.Add("host-states", lifecycle.Func(r.recordHosts))
	if r.events != nil {
		r.lead.Add("events-retention", lifecycle.Func(r.events.Run))
	}
	r.lead.Add("ejection-events", lifecycle.Func(r.ejections.Run))
	r.lead.Add("publish", lifecycle.Func(func(ctx context.Context) error {
		return r.pub.Loop(ctx, leading, r.refresh, r.changes, r.cfg.Resync)
	}))
	r.lead.Add("publish-guard", lifecycle.Func(func(ctx context.Context) error {
		return r.pub.Guard(ctx, leading, watch)
	}))
	if cm := r.cm; cm != nil {
		r.lead.Add("certificates", cm)
		r.lead.Add("certificates-guard", lifecycle.Func(func(ctx context.Context) error {
			return watch(ctx, r.names.CertificatesBucket(), func(key string) {
				r.logger.Warn("a certificate the scheduler had not sealed: putting every certificate again", zap.String("key", key))
				cm.Repair()
			})
		}))
	}
	if nk := r.nk; nk != nil {
		r.lead.Add("node-keys", lifecycle.Func(nk.Lead))
		r.lead.Add("node-keys-guard", lifecycle.Func(func(ctx context.Context) error {
			return watch(ctx, r.names.NodesBucket(), func(key string) {
				r.logger.Warn("a node-key directory entry the scheduler had not sealed: publishing the directory again", zap.String("node", key))
				nk.Repair()
			})
		}))
	}
}

// listen follows Postgres's notifications: the lease (a follower tries
// at once), the API tokens, the host registry and the apps.
func (r *replica) listen(ctx context.Context) error {
	return r.st.Listen(ctx, []string{store.LeaseChannel, store.AppsChannel, store.HostsChannel, store.TokensChannel, store.InstancesChannel}, func(ch, payload string) {
		switch {
		case ch == store.InstancesChannel: // the leader recorded a health: only the console shows it
			if payload != "" {
				r.live.Changed(payload)
			}
		case ch == store.LeaseChannel:
			r.el.Wake()
		case ch == store.TokensChannel: // a token made or revoked (or notifications lost)
			r.keys.Changed()
		case ch == store.HostsChannel:
			if err := r.fl.Sync(ctx); err != nil {
				r.logger.Warn("could not read the host registry", zap.Error(err))
			}
			r.ctl.Wake()
		case payload == "": // reconnected: notifications may be lost
			signal(r.refresh)
		default:
			r.ctl.Wake()
			r.wakeCerts()
			select {
			case r.changes <- payload:
			default: // a full queue: the resync catches up
			}
		}
	})
}

// recordHosts records every host's state at once, with what this replica
// saw of them while following, then again after each change, until ctx
// ends (a leader-only service).
func (r *replica) recordHosts(ctx context.Context) error {
	for {
		if l, ok := r.el.Leader(); ok {
			now := time.Now()
			if err := r.st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
				var errs []error
				r.fl.Each(func(host, state, reason string, lastOK time.Time) {
					errs = append(errs, tx.SetHostState(ctx, host, state, reason, now, lastOK))
				})
				return errors.Join(errs...)
			}); err != nil && ctx.Err() == nil {
				r.logger.Warn("could not record the hosts' states", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.hostsChanged:
		}
	}
}

// APIListener listens on the API's address, with TLS when it has a key pair.
func APIListener(a API) (net.Listener, error) {
	ln, err := net.Listen("tcp", a.Listen)
	if err != nil {
		return nil, fmt.Errorf("--api-listen %s: %w", a.Listen, err)
	}
	if a.Cert != nil {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*a.Cert}, MinVersion: tls.VersionTLS12})
	}
	return ln, nil
}

// certManager builds the certificate manager.
func certManager(c ACME, resync time.Duration, st *store.Store, conn *bus.Conn, names msg.Names, pub *publish.Publisher, leader func() (store.Lease, bool),
	served certs.Served, logger *zap.Logger) (*certs.Manager, error) {
	keys, err := vault.Load(c.CertKeyFile, "--cert-key-file")
	if err != nil {
		return nil, err
	}
	client, err := certs.HTTPClient(c.CAFile)
	if err != nil {
		return nil, err
	}
	// The keys go to the lbagents sealed to their role's keys (and each
	// node's): without Berth's role credentials there is nothing to seal to.
	if _, err := conn.Keys().SealTo(bus.RoleLBAgent, []byte("probe")); err != nil {
		return nil, fmt.Errorf("--acme-directory needs Berth's role credentials (--nats-nkey with the roles' trust lines, or the embedded NATS), "+
			"so that certificate keys reach the lbagents only: %w", err)
	}
	shelf := &certs.BusShelf{Conn: conn, Names: names, Logger: logger, Settle: 250 * time.Millisecond}
	issuer := &certs.ACME{Directory: c.Directory, Email: c.Email, HTTP: client, Vault: keys, Accounts: st, Solver: shelf, Logger: logger}
	logger.Info("ordering certificates for apps with routing.tls.acme", zap.String("directory", c.Directory), zap.String("cert_key_id", keys.ID()))
	return certs.New(certs.Config{RenewBefore: c.RenewBefore, Resync: resync, Served: served, OrdersPerHour: c.OrdersPerHour},
		st, pub, issuer, shelf, keys, leader, logger), nil
}

// NodeScan is how often the scheduler reads its NATS credentials
// directory again: how soon a new lbagent node, or a key rotation step,
// takes effect.
const NodeScan = 2 * time.Second

// nodeKeys builds the publisher of the node-key directory from the
// credentials in dir, which also gives the embedded NATS its users
// (setUsers, nil without one).
func nodeKeys(resync time.Duration, conn *bus.Conn, names msg.Names, dir string, leading func() bool, setUsers func(*bus.Credentials) error,
	logger *zap.Logger) *nodekeys.Publisher {
	deps := nodekeys.Deps{
		Read:    func() (*bus.Credentials, error) { return bus.ReadCredentials(dir) },
		Leading: leading,
		Users:   setUsers,
		Open: func(ctx context.Context) (nodekeys.Bucket, error) {
			return bus.OwnedKV(ctx, conn, names, bus.RoleScheduler, names.NodesBucket())
		},
	}
	return nodekeys.New(nodekeys.Config{Scan: NodeScan, Resync: resync}, deps, logger)
}

// servedBy reports from the lbagents' records whether every live lbagent
// (one at least) serves an app at a generation or later.
func servedBy(agents *view.Table[*msg.Agent]) certs.Served {
	return func(app string, gen int64) bool {
		live, all := 0, true
		agents.Read(func(rows map[string]*msg.Agent, _ uint64) {
			for _, a := range rows {
				if time.Since(a.UpdatedAt) > msg.AgentTTL {
					continue
				}
				live++
				all = all && a.Apps[app] >= gen
			}
		})
		return live > 0 && all
	}
}

// agentsOf lists the lbagents' records as this replica's watch holds them,
// for the API's edge view: every replica watches the agents bucket, so a
// follower answers as the leader does.
func agentsOf(agents *view.Table[*msg.Agent]) func() []*msg.Agent {
	return func() []*msg.Agent {
		var out []*msg.Agent
		agents.Read(func(rows map[string]*msg.Agent, _ uint64) {
			out = make([]*msg.Agent, 0, len(rows))
			for _, a := range rows {
				out = append(out, a)
			}
		})
		return out
	}
}

// instancesRevision reads the newest revision of the instances bucket
// from NATS, the same for every replica, for each lbagent's lag. The
// bucket is opened on first use and kept.
func instancesRevision(conn *bus.Conn, bucket string) func(ctx context.Context) (uint64, error) {
	var (
		mu sync.Mutex
		kv *bus.KV
	)
	return func(ctx context.Context) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		if kv == nil {
			k, err := conn.KV(ctx, bucket)
			if err != nil {
				return 0, err
			}
			kv = k
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return 0, err
		}
		return st.LastRevision, nil
	}
}

// ejectedBy lists, from the records of the live lbagents, the instances of
// an app each has ejected and not yet taken back at now, by node and
// instance.
func ejectedBy(agents *view.Table[*msg.Agent]) func(app string, now time.Time) []api.EjectionView {
	return func(app string, now time.Time) []api.EjectionView {
		var out []api.EjectionView
		agents.Read(func(rows map[string]*msg.Agent, _ uint64) {
			for _, a := range rows {
				if now.Sub(a.UpdatedAt) > msg.AgentTTL {
					continue
				}
				for _, e := range a.Ejected {
					if e.App == app && e.Until.After(now) {
						out = append(out, api.EjectionView{Node: a.Node, Instance: e.Instance, Reason: e.Reason, Since: e.Since, Until: e.Until, Times: e.Times})
					}
				}
			}
		})
		sort.Slice(out, func(i, j int) bool {
			if out[i].Node != out[j].Node {
				return out[i].Node < out[j].Node
			}
			return out[i].Instance < out[j].Instance
		})
		return out
	}
}
