// Command lbagent runs beside nginx: it watches Berth's state on NATS,
// renders nginx config from templates, tests it, swaps it in atomically,
// reloads nginx and confirms the reload, and never leaves nginx broken.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
