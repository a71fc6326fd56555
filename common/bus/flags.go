package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
)

// Flags are the NATS flags every daemon shares. Daemons embed them in their
// kong CLI struct with an env prefix (envprefix:"BERTH_HEALTHD_"), so each
// flag reads e.g. BERTH_HEALTHD_NATS_URL, and pass FlagVars (or their own
// values for nats_url_default and nats_url_help) to kong.

type Flags struct {
	URL       string `name:"nats-url" help:"${nats_url_help}" default:"${nats_url_default}" env:"NATS_URL"`
	CredsFile string `name:"nats-creds" help:"NATS credentials file (JWT and nkey seed)." default:"" env:"NATS_CREDS" type:"path"`
	NKeyFile  string `name:"nats-nkey" help:"This daemon's role credential, as scheduler nats-credential prints it: its NATS nkey seed, and the public keys of the roles whose sealed records it trusts." default:"" env:"NATS_NKEY" type:"path"`
	TokenFile string `name:"nats-token-file" help:"File holding a NATS token." default:"" env:"NATS_TOKEN_FILE" type:"path"`
	TLSCA     string `name:"nats-tls-ca" help:"PEM CA bundle for the NATS server certificate." default:"" env:"NATS_TLS_CA" type:"path"`
	TLSCert   string `name:"nats-tls-cert" help:"PEM client certificate for NATS." default:"" env:"NATS_TLS_CERT" type:"path"`
	TLSKey    string `name:"nats-tls-key" help:"PEM client key for NATS." default:"" env:"NATS_TLS_KEY" type:"path"`
	Replicas  int    `name:"nats-replicas" help:"How many servers of a NATS cluster hold each bucket this daemon creates: 1, 3 or 5 (3 on a 3-node cluster; at most its size). A bucket with fewer is raised to it; one with more keeps its own." default:"1" env:"NATS_REPLICAS"`
}

// FlagVars are the kong variables of Flags for a daemon that connects to
// an external NATS by default.
var FlagVars = map[string]string{
	"nats_url_default": "nats://127.0.0.1:4222",
	"nats_url_help":    "NATS server URL(s), comma-separated: every member of a NATS cluster (nats://n1:4222,nats://n2:4222,nats://n3:4222).",
}

// Options turns the flags into connection options for a client called
// name, reading the token file and the record keys of the --nats-nkey
// file (LoadKeys). The token is never logged.
func (f Flags) Options(name string) (Options, error) {
	o := Options{URL: f.URL, Name: name, CredsFile: f.CredsFile, NKeyFile: f.NKeyFile, TLSCA: f.TLSCA, TLSCert: f.TLSCert, TLSKey: f.TLSKey, Replicas: f.Replicas}
	var errs []error
	if !slices.Contains(ValidReplicas, f.Replicas) {
		// Reported here with the flag's name; Options.Validate would
		// take a zero for its default.
		errs = append(errs, fmt.Errorf("--nats-replicas %d: must be 1, 3 or 5 (an odd count, at most the servers of the NATS cluster)", f.Replicas))
		o.Replicas = 1
	}
	if f.NKeyFile != "" {
		k, err := LoadKeys(f.NKeyFile)
		if err != nil {
			return o, errors.Join(append(errs, fmt.Errorf("--nats-nkey: %w", err))...)
		}
		o.Keys = k
	}
	if f.TokenFile != "" {
		b, err := os.ReadFile(f.TokenFile)
		if err != nil {
			return o, errors.Join(append(errs, fmt.Errorf("--nats-token-file: %w", err))...)
		}
		o.Token = strings.TrimSpace(string(b))
	}
	return o, errors.Join(append(errs, o.Validate())...)
}

// Reconnected returns a channel that receives a value after each reconnect
// (one pending at most), and a function that stops the notifications.
func (c *Conn) Reconnected() (<-chan struct{}, func()) { return c.reconnected() }

// Connect connects as client name with the flags' options (Options, then
// Connect) under the contract's names n: what every daemon does at
// start-up.
func (f Flags) Connect(ctx context.Context, name string, n msg.Names, logger *zap.Logger) (*Conn, error) {
	opts, err := f.Options(name)
	if err != nil {
		return nil, err
	}
	opts.Names = n
	return Connect(ctx, opts, logger)
}
