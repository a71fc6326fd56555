// Package templates carries the default nginx templates that lbagent
// renders, embedded so each binary has a copy. Operators may point
// --templates at a directory with edited copies of these files.
package templates

import "embed"

// FS holds every *.tmpl file of this directory.
//
//go:embed *.tmpl
var FS embed.FS
