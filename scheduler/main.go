// Command scheduler decides how many replicas each app runs and makes
// Docker match. Its subcommands run a replica (API, leader election,
// publishing), migrate the database, and drive a running scheduler
// through its HTTP API.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
