# The default image of bottle's `claude` provider (`bottle images build claude`).
#
# Claude Code on Node, with the tools an agent reaches for (git, ripgrep, curl, less, procps).
# No CA bundle is baked in: the launcher appends the bottle's CA to the system bundle at start.
# The workload runs as uid 1000 (the base image's `node` user); bottle sets HOME=/home/agent
# and binds the bottle's kept home there.
FROM docker.io/library/node:22-bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git ripgrep curl less procps \
 && rm -rf /var/lib/apt/lists/*

RUN npm install -g @anthropic-ai/claude-code \
 && npm cache clean --force

USER 1000:1000
WORKDIR /home/agent/workspace
CMD ["claude"]
