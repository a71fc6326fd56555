package server

import (
	"context"
	"fmt"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
)

// natsSide is this replica's NATS: its connection, and the embedded
// server when it runs one.
type natsSide struct {
	conn *bus.Conn
	srv  *bus.EmbeddedServer // nil with an external NATS
	// setUsers gives the embedded NATS the users of a credentials
	// directory; nil unless it runs Berth's generated roles.
	setUsers func(*bus.Credentials) error
	// nodeCredentials is the directory whose node keys the leader
	// publishes; empty for none.
	nodeCredentials string
}

func (n *natsSide) close() {
	if n.conn != nil {
		n.conn.Close()
	}
	if n.srv != nil {
		n.srv.Shutdown()
	}
}

// openNATS starts the embedded NATS when no URL is given, connects, and
// creates the buckets the scheduler owns (a NATS not ready yet is only
// warned about: they are created at their first use).
func openNATS(ctx context.Context, cfg NATS, id string, names msg.Names, logger *zap.Logger) (*natsSide, error) {
	n := &natsSide{nodeCredentials: cfg.NodeCredentials}
	flags := cfg.Client
	if cfg.embedded() {
		if err := n.embed(cfg, &flags, names, logger); err != nil {
			return nil, err
		}
	}
	conn, err := flags.Connect(ctx, "scheduler-"+id, names, logger)
	if err != nil {
		n.close()
		return nil, err
	}
	n.conn = conn
	if err := conn.EnsureBuckets(ctx, bus.MustOwnedBuckets(names, bus.RoleScheduler)); err != nil {
		logger.Warn("could not ensure buckets yet", zap.Error(err))
	}
	return n, nil
}

// embed starts the embedded NATS and points flags at it. Without a
// server config it requires Berth's role credentials, made on first
// start, and one per lbagent node that has its own; this replica then
// connects with the scheduler's, unless given another.
func (n *natsSide) embed(cfg NATS, flags *bus.Flags, names msg.Names, logger *zap.Logger) error {
	eo := bus.EmbeddedOptions{Host: cfg.Host, Port: cfg.Port, StoreDir: cfg.StoreDir, ConfigFile: cfg.ServerConfig}
	if cfg.ServerConfig == "" {
		creds, err := bus.OpenCredentials(cfg.CredentialsDir)
		if err != nil {
			return fmt.Errorf("embedded NATS credentials: %w", err)
		}
		if eo.Users, err = creds.Users(names); err != nil {
			return fmt.Errorf("embedded NATS credentials: %w", err)
		}
		if flags.NKeyFile == "" && flags.CredsFile == "" && flags.TokenFile == "" {
			flags.NKeyFile = creds.Seeds()[bus.RoleScheduler]
		}
		if n.nodeCredentials == "" {
			n.nodeCredentials = cfg.CredentialsDir
		}
		logger.Info("embedded NATS requires a role credential of every client", zap.String("credentials", cfg.CredentialsDir),
			zap.String("give_another_daemon", "scheduler nats-credential <healthd|lbagent|reader> > seed.nk, then its --nats-nkey seed.nk"),
			zap.String("give_an_lbagent_its_own_key", "scheduler nats-credential lbagent --node <node> > node.nk"))
	}
	srv, err := bus.Embedded(eo, logger)
	if err != nil {
		return err
	}
	n.srv = srv
	if len(eo.Users) > 0 {
		n.setUsers = func(c *bus.Credentials) error {
			users, err := c.Users(names)
			if err != nil {
				return err
			}
			return srv.SetUsers(users)
		}
	}
	flags.URL = srv.URL()
	logger.Info("embedded NATS started", zap.String("url", flags.URL))
	return nil
}
