package bus

import "github.com/berthhq/berth/common/msg"

// ContractBuckets turns the v1 contract's buckets into bucket configs:
// state buckets on file storage, so they survive a NATS restart, and the
// heartbeat buckets (the ones with a TTL) in memory.
func ContractBuckets(n msg.Names) []BucketConfig {
	var out []BucketConfig
	for _, b := range n.Buckets() {
		storage := FileStorage
		if b.TTL > 0 {
			storage = MemoryStorage
		}
		out = append(out, BucketConfig{Name: b.Name, Description: b.Description, History: b.History, TTL: b.TTL, Storage: storage,
			MaxBytes: b.MaxBytes, MaxConsumers: b.MaxConsumers})
	}
	return out
}
