package sqs_test

const childEnv = "SLUICE_SQS_TEST_CHILD"

func runChild() int { return 2 }
