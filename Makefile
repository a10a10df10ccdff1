reliability:
	./scripts/reliability.sh

test:
	./scripts/test.sh

.PHONY: reliability test
