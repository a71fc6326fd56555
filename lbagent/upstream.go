package main

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/berthhq/berth/lbagent/internal/agent"
	"github.com/berthhq/berth/lbagent/internal/dynamic"
	"github.com/berthhq/berth/lbagent/internal/nginx"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/templates"
)

// upstreamMode is the resolved --upstream-mode; nil is reload mode.
type upstreamMode struct {
	client *dynamic.Client
	render *render.Dynamic
}

func (u *upstreamMode) pusher() agent.Pusher {
	if u == nil {
		return nil
	}
	return u.client
}

func (u *upstreamMode) snapshot() string {
	if u == nil {
		return ""
	}
	return u.render.Snapshot
}

// dynamicMode resolves --upstream-mode, says which in the log, and for
// dynamic mode installs the Lua balancer and the control token beside the
// config nginx reads (target) and sets c.dyn for the renders.
func (c *cli) dynamicMode(ctx context.Context, tmplDir string, main bool, target string, logger *zap.Logger) (*upstreamMode, error) {
	on, why := dynamic.Choose(ctx, c.UpstreamMode, main, c.ModulesDir, nginx.Binary{Path: c.NginxBin}, filepath.Join(c.StateDir, "probe"))
	mode := dynamic.ModeReload
	if on {
		mode = dynamic.ModeDynamic
	}
	logger.Info("upstream mode", zap.String("mode", mode), zap.String("why", why))
	if !on {
		return nil, nil // reload mode renders every app: the router needs the Lua module
	}
	if !c.DynRoutes {
		logger.Info("--no-dynamic-routes: every app is rendered; a route change is a reload")
	}
	dir := filepath.Dir(target)
	d := &render.Dynamic{LuaDir: filepath.Join(dir, "lua"), Snapshot: filepath.Join(dir, "berth-endpoints.json"),
		Token: filepath.Join(dir, "berth-control.token"), ModulesDir: c.ModulesDir, Drain: c.ReloadDrain > 0,
		Routes: c.DynRoutes}
	var src fs.FS = templates.FS
	if tmplDir != "" {
		if _, err := os.Stat(filepath.Join(tmplDir, dynamic.LuaFile)); err == nil {
			src = os.DirFS(tmplDir)
		}
	}
	if err := dynamic.InstallLua(src, d.LuaDir); err != nil {
		return nil, err
	}
	token, err := dynamic.EnsureToken(d.Token)
	if err != nil {
		return nil, err
	}
	c.dyn = d
	return &upstreamMode{client: dynamic.NewClient(c.StatusListen, token), render: d}, nil
}
