// Package templates carries the default nginx templates that lbagent
// renders, embedded so each binary has a copy. Operators may point
// --templates at a directory with edited copies of these files.
package templates

import "embed"

// FS holds every *.tmpl file of this directory and, under lua/berth/, the
// Lua modules that nginx loads in dynamic upstream mode (lbagent writes them
// to <conf-dir>/lua/berth/).
//
//go:embed *.tmpl lua/berth/*.lua
var FS embed.FS
