package subjects

// advisoryTerminatedPrefix is nats-server's JSAdvisoryConsumerMsgTerminatedPre:
// the server publishes a JSON advisory to <prefix>.<stream>.<consumer> when
// a consumer's message is terminated, by a client's Term or because stream
// limits removed it while it was pending.
const advisoryTerminatedPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED."

// ExpiryQueue is the queue group in which callbackd instances subscribe to
// advisories, so that each advisory is counted by one instance.
const ExpiryQueue = "callbackd_expiry"

// AdvisoryTerminated returns the subject of the terminated-message
// advisories of a consumer of a stream.
func AdvisoryTerminated(stream, consumer string) string {
	return advisoryTerminatedPrefix + stream + "." + consumer
}
