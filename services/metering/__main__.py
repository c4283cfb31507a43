from libs.common.bus import run_service
from services.metering.app import create_service
from services.metering.settings import MeteringSettings

settings = MeteringSettings()
run_service(lambda: create_service(settings), settings)
