# One image for every role: the api, worker and migrate services differ only by command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NEPENTHE_STORE_DIR=/data/models_store

WORKDIR /srv/nepenthe

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p app workers unlearning client \
    && touch app/__init__.py workers/__init__.py unlearning/__init__.py client/__init__.py \
    && pip install . \
    && pip uninstall -y nepenthe

COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY workers ./workers
COPY unlearning ./unlearning
COPY client ./client
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home /srv/nepenthe nepenthe \
    && mkdir -p /data/models_store \
    && chown -R nepenthe /data

USER nepenthe
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
