package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// tokensCmd is `scheduler tokens …`: the API's scoped tokens.
type tokensCmd struct {
	Create tokenCreateCmd `cmd:"" help:"Make an API token. Prints it once, on standard output and nothing else there; Postgres keeps only its hash."`
	Ls     tokenLsCmd     `cmd:"" help:"List the API tokens: name, scope, who made them, last use, revocation. Never their secrets."`
	Revoke tokenRevokeCmd `cmd:"" help:"Revoke an API token: every replica refuses it at once (within 10s if a replica missed the notification)."`
}

type tokenCreateCmd struct {
	clientFlags `embed:""`
	Name        string   `help:"Its name, recorded as the actor of every change it makes: a DNS label (ci, alice, deploy-bot)." required:""`
	Scope       string   `help:"read (every GET), deploy (read, and apply, scale, rollback, rm) or admin (deploy, and hosts and tokens)." required:"" enum:"read,deploy,admin"`
	App         []string `name:"app" help:"With --scope deploy: the apps it may change, by name or pattern (shop, shop-*); repeatable. Without it, every app: give each team a token for its own apps." placeholder:"PATTERN"`
}

type tokenLsCmd struct {
	clientFlags `embed:""`
}

type tokenRevokeCmd struct {
	clientFlags `embed:""`
	Name        string `arg:"" help:"The token's name."`
}

func tokensDispatch(ctx context.Context, t *tokensCmd, command string, out, errOut io.Writer) error {
	switch {
	case strings.HasPrefix(command, "tokens create"):
		cl, err := newClient(t.Create.clientFlags)
		if err != nil {
			return err
		}
		body, _ := json.Marshal(api.TokenRequest{Name: t.Create.Name, Scope: t.Create.Scope, Apps: t.Create.App})
		var v api.NewToken
		if err := cl.do(ctx, "POST", "/v1/tokens", body, &v); err != nil {
			return err
		}
		if t.Create.Output == "json" {
			return show(out, "json", v, nil)
		}
		fmt.Fprintln(out, v.Token)
		fmt.Fprintf(errOut, "scheduler: token %s (%s scope) created; it is shown this once: keep it in a file of mode 0600 (--token-file) or in BERTH_TOKEN\n", v.Name, v.Scope)
		return nil
	case strings.HasPrefix(command, "tokens ls"):
		cl, err := newClient(t.Ls.clientFlags)
		if err != nil {
			return err
		}
		var vs []api.TokenView
		if err := cl.do(ctx, "GET", "/v1/tokens", nil, &vs); err != nil {
			return err
		}
		return show(out, t.Ls.Output, vs, func(w io.Writer) {
			if len(vs) == 0 {
				fmt.Fprintln(w, "no token yet: scheduler tokens create --name NAME --scope read|deploy|admin (the --api-token-file token, named bootstrap, is not listed)")
				return
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSCOPE\tAPPS\tCREATED\tBY\tLAST USED\tREVOKED")
			for _, v := range vs {
				apps := "*"
				if len(v.Apps) > 0 {
					apps = strings.Join(v.Apps, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\t%s\t%s\t%s\n", v.Name, v.Scope, apps, age(v.CreatedAt), v.CreatedBy, ago(v.LastUsedAt, "never"), ago(v.RevokedAt, "-"))
			}
			tw.Flush()
		})
	case strings.HasPrefix(command, "tokens revoke"):
		cl, err := newClient(t.Revoke.clientFlags)
		if err != nil {
			return err
		}
		var v api.TokenView
		if err := cl.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(t.Revoke.Name), nil, &v); err != nil {
			return err
		}
		return show(out, t.Revoke.Output, v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: revoked; every scheduler replica refuses it\n", v.Name)
		})
	}
	return fmt.Errorf("unknown command %q", command)
}

// ago is how long ago t was, or none when it is unset.
func ago(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return age(*t) + " ago"
}
